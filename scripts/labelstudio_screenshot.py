"""Screenshot of a Label Studio labeling page in headless Chromium (run with .venv-ls's python).

    .venv-ls/bin/python scripts/labelstudio_screenshot.py --url http://127.0.0.1:8080 \
        --email E --password P --project 1 --task 1 --out docs/labelstudio_labeling.png

Logs in through the login form, opens the task in the labeling editor (its pre-annotation is shown
as the starting annotation), waits for the image to be drawn and saves a PNG. Uses Debian's
``chromium`` and ``chromium-driver`` (scripts/install_label_studio.sh installs them).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--project", required=True, type=int)
    p.add_argument("--task", required=True, type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--timeout", type=float, default=90.0)
    a = p.parse_args(argv)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1080", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=opts)
    try:
        wait = WebDriverWait(driver, a.timeout)
        driver.get(f"{a.url}/user/login/")
        wait.until(EC.presence_of_element_located((By.NAME, "email"))).send_keys(a.email)
        driver.find_element(By.NAME, "password").send_keys(a.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        wait.until(lambda d: "/user/login" not in d.current_url)
        driver.get(f"{a.url}/projects/{a.project}/data?task={a.task}")
        # The editor draws the image and the boxes on canvases; wait for them, then let it settle.
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "canvas")))
        time.sleep(6)
        driver.save_screenshot(a.out)
    finally:
        driver.quit()
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
