#!/bin/sh
# A shell wrapper: writes its result and an artifact, says something on each stream.
echo "params: $RUNTREE_PARAMS"
echo "a warning" >&2
echo "notes for $1" > notes.txt
printf '{"loss": 1.5, "tool": "sh", "artifacts": {"notes": "notes.txt"}}' > "$RUNTREE_RESULT"
