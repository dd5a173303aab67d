"""Screenshot of the MLflow UI showing a pipeline's run tree expanded, for the README.

Run by hand (needs Debian's `chromium` and `chromium-driver` packages and `pip install selenium`):

    python scripts/ui_screenshot.py                      # runs +sweep=cnn in a temp dir first
    python scripts/ui_screenshot.py --store ./mlflow.db --experiment cnn --out docs/mlflow-ui.png

It starts `mlflow ui` on a free loopback port against the store, opens the experiment's runs page in headless
Chromium, expands every nested run and saves the picture.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtree_pipeline.tracking.localserver import LocalMlflowServer

REPO = Path(__file__).resolve().parent.parent
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=2000,1120",
)
# Columns that make the tree's point: the stage's best, each configuration's mean over its seeds, each seed's own.
COLUMNS = ("best_val_loss", "mean_val_loss", "val_loss")
# The run-name cell's expand/collapse button; the "+" icon has a vertical bar the "−" icon lacks.
EXPANDER = "button[data-component-id*='runnamecellrenderer']"
# Header col-id -> pixels to drag its right edge by: variant names like `search/channels=8,lr=…` need room.
RESIZE = {"attributes.`Run Name`": 260, "attributes.`Dataset`": -200}


def make_store(workdir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "runtree_pipeline", "+sweep=cnn", "progress=false"], cwd=workdir, check=True)
    return workdir / "mlflow.db"


def click_all(driver, xpath: str) -> None:
    for element in driver.find_elements("xpath", xpath):
        try:
            element.click()
        except Exception:  # noqa: BLE001 - a banner that is already gone is fine
            pass


def screenshot(url: str, experiment_id: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{url}/#/experiments/{experiment_id}/runs")
        time.sleep(6)
        click_all(driver, "//button[normalize-space(.)='Model training']")
        click_all(driver, "//button[@aria-label='Close']")
        time.sleep(2)
        for _ in range(6):
            expanders = driver.find_elements("css selector", EXPANDER)
            collapsed = [b for b in expanders if "V4.5" in b.get_attribute("innerHTML")]
            if not collapsed:
                break
            for button in collapsed:
                button.click()
                time.sleep(0.3)
            time.sleep(1)
        click_all(
            driver,
            "//*[contains(normalize-space(.), 'Show more columns')"
            " and not(*[contains(normalize-space(.), 'Show more columns')])]",
        )
        time.sleep(1)
        for column in COLUMNS:
            click_all(driver, f"//*[normalize-space(text())='{column}']")
            time.sleep(0.3)
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        time.sleep(1)
        for col_id, dx in RESIZE.items():
            header = f'.ag-header-cell[col-id="{col_id}"] .ag-header-cell-resize'
            for handle in driver.find_elements("css selector", header):
                ActionChains(driver).drag_and_drop_by_offset(handle, dx, 0).perform()
                time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an mlflow.db made by the pipeline (default: run +sweep=cnn now)")
    parser.add_argument("--experiment", default="cnn", help="experiment to show (its metrics named in COLUMNS)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow-ui.png")
    args = parser.parse_args()
    store = args.store.resolve() if args.store else make_store(Path(tempfile.mkdtemp(prefix="runtree-ui-")))
    from mlflow import MlflowClient

    experiment = MlflowClient(f"sqlite:///{store}").get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment '{args.experiment}' in {store}")
    with LocalMlflowServer(store.parent, backend_uri=f"sqlite:///{store}", command="ui", workers=None) as ui:
        screenshot(ui.url, experiment.experiment_id, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
