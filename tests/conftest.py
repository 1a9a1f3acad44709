"""Shared test setup: pinned BLAS threads, and the CI rule that a missing tool is a failure.

Locally a missing `dot` binary, TensorFlow or MNIST copy skips the tests that need it; with
CI=true it fails them, so a green CI run means everything really ran.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import importlib
import shutil
from pathlib import Path
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def require(ok: bool, what: str) -> None:
    """Skip locally when `what` is missing; fail in CI, where skipping would hide it."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI needs {what}, and it is missing (.ci/run must install it)")
    pytest.skip(f"{what} not available")


def require_module(name: str, what: str) -> ModuleType:
    """The imported module `name`, under the rule of `require`."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    require(module is not None, what)
    return module


def require_python3_kernel() -> None:
    """nbclient, ipykernel and the python3 Jupyter kernel, under the rule of `require`."""
    try:
        import nbclient  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        require(False, "nbclient and ipykernel (pip install nbclient ipykernel)")
    try:
        KernelSpecManager().get_kernel_spec("python3")
        has_kernel = True
    except NoSuchKernel:
        has_kernel = False
    require(has_kernel, "the python3 Jupyter kernel (pip install ipykernel)")


@pytest.fixture(scope="session")
def tf():
    return require_module("tensorflow", "TensorFlow (pip install tensorflow-cpu)")


@pytest.fixture(scope="session")
def torch():
    """PyTorch, a benchmark contender: optional for users, installed by .ci/run (the CPU build)."""
    return require_module("torch", "PyTorch (pip install torch==2.13.0, the CPU build on this machine)")


@pytest.fixture(scope="session")
def dot_binary():
    path = shutil.which("dot")
    require(path is not None, "the graphviz `dot` binary (apt-get install graphviz)")
    return path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files: $TINYGRAD_MNIST_DATA, else ../shared/data/mnist beside the
    project, else the user cache (downloaded there once, with checksums, if missing)."""
    if "TINYGRAD_MNIST_DATA" in os.environ:
        d = Path(os.environ["TINYGRAD_MNIST_DATA"])
    elif (DEFAULT_MNIST / "train-images-idx3-ubyte.gz").exists():
        d = DEFAULT_MNIST
    else:
        from tinygrad_mnist.data import MNISTError, default_cache_dir, download_mnist
        d = default_cache_dir()
        try:
            download_mnist(d)
        except MNISTError:
            pass
    require((d / "train-images-idx3-ubyte.gz").exists(), f"MNIST files in {d}")
    return d


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by selenium; one browser for the whole session.

    The flags keep Chromium off the network (this machine has none) and work as root."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    require(chromium is not None and driver_path is not None,
            "Chromium and its driver (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    require(webdriver is not None, "selenium (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
