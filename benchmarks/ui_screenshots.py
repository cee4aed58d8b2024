"""Screenshots of `mlflow ui` in a real (headless) browser: what a person sees after training.

    python benchmarks/ui_screenshots.py --tracking-uri sqlite:///mlflow.db --out docs/ui

Starts `mlflow server` on 127.0.0.1 against the store (one worker), waits for /health, and
has headless Chromium (Debian package `chromium`) take three pictures of the two newest
FINISHED training runs of the experiment:
- `run_metrics.png`, the newer run's "Model metrics" tab: `epoch/val_iou`, `epoch/train_loss`,
  `train/loss`, `train/iou` (teacher-forced) and, after `evaluate`, `eval/auc` against epoch;
- `model.png`, the registered model version behind `models:/seqtrack-lasot@champion` (alias,
  source run, the LoggedModel it points to);
- `compare.png`, the compare view of the two runs (params that differ, metric charts side by side).
`logged_models.png` adds the experiment's Models tab: one LoggedModel per epoch, with metrics.
The server is stopped afterwards. Not run by the tests (needs Chromium and a few seconds
of rendering per page).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server did not answer {url} within {seconds:.0f} s")


def screenshot(browser: str, url: str, out: Path, width: int, height: int, budget_ms: int) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    print(f"{out}  <- {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--out", default="docs/ui")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--model", default="seqtrack-lasot@champion", help="registered name@alias")
    parser.add_argument("--budget-ms", type=int, default=40000, help="rendering time per page (charts load last)")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        raise SystemExit("no chromium: apt-get install -y chromium")

    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    from mlflow import MlflowClient

    client = MlflowClient(args.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.status = 'FINISHED' and tags.`seqtrack.kind` = 'train'",
                              order_by=["attributes.start_time DESC"], max_results=2)
    if len(runs) < 2:
        raise SystemExit("need two FINISHED training runs in the store")
    exp = runs[0].info.experiment_id
    name, alias = args.model.split("@")
    version = client.get_model_version_by_alias(name, alias)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.tracking_uri,
                               "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"{base}/health", 120)
        ids = json.dumps([r.info.run_id for r in runs])
        pages = {
            "run_metrics.png": f"{base}/#/experiments/{exp}/runs/{runs[0].info.run_id}/model-metrics",
            "model.png": f"{base}/#/models/{name}/versions/{version.version}",
            "compare.png": f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                           f"&experiments={urllib.parse.quote(json.dumps([exp]))}",
            "logged_models.png": f"{base}/#/experiments/{exp}/models",
        }
        for file, url in pages.items():
            screenshot(browser, url, out / file, 1700, 1050, args.budget_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
