"""Shared fixtures: offline model folders, one exported model repository, one real tritonserver.

Everything runs on CPU against the tritonserver shipped in nvidia-pytriton. The model folders are
built once into ``<repo>/fixtures`` (``make fixtures``) and reused, each on first use (a test that
reads one tokenizer builds one folder); the repository is exported per session into a temporary
folder, so a test run always serves what the current code exports.

Tiers, by what a test starts (README "Tests"; registered in pyproject.toml):
- ``server``: uses the shared session tritonserver (``server``, ``clients``, ``rerank_server`` here);
  marked automatically from the fixtures a test uses.
- ``isolated``: starts processes of its own (its own tritonservers, launchers, venvs) or kills them;
  marked automatically when a test uses ``replicas`` or a fixture of its module named ``*_server``,
  otherwise by ``pytestmark``/``@pytest.mark.isolated`` in the module.
- neither (the fast tier, ``make test-fast``): starts no tritonserver and no server process; ``slow``
  takes out the few of these that are heavy anyway (an ONNX export with torch, a CLI run).
A guard (``TierGuard``) fails a test that starts a tritonserver outside its tier.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("TEMBED_FIXTURES", ROOT / "fixtures"))
SERVED = ("multilingual-e5-small", "all-minilm-l6-v2", "qwen3-embedding-tiny")
# Rerankers, served by their own server next to one embedding model (rerank_server).
QWEN, TWIN, BERT = "qwen3-reranker-tiny", "qwen3-reranker-tiny-seq-cls", "bert-cross-encoder-tiny"
RERANKERS = (QWEN, TWIN, BERT)
EMBEDDER = "multilingual-e5-small"
MAX_LENGTH = 512  # small on purpose: the truncation path is reached with short texts on 2 CPU cores
# One question and its candidate passages, in the scripts rerankers meet.
QUERY = "什么是向量检索？"
DOCS = [
    "向量检索把文本编码成向量，再按相似度找最近的段落。",
    "今天天气很好，我们去公园散步吧。",
    "Vector search embeds passages once and finds nearest neighbours at query time.",
    "北京是中华人民共和国的首都。",
    "A reranker reads the query and the passage together and scores how well they match.",
    "短",
]

# Texts in the scripts our users send: Chinese, English, mixed, emoji, one long-ish paragraph.
TEXTS = [
    "北京是中华人民共和国的首都。",
    "如何在家里做一杯好喝的咖啡？",
    "The quick brown fox jumps over the lazy dog.",
    "Triton 推理服务器 serves embeddings 很快",
    "今天天气真好 ☀️🌈 let's go hiking 🥾",
    "深度学习模型在自然语言处理任务中取得了显著进展，尤其是在文本检索、语义搜索和问答系统等方面。"
    " Large language models changed retrieval-augmented generation as well.",
]


LINK_ABOVE = 1 << 20  # bytes: copy_served hard-links larger files (graphs, weights), copies the rest


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link for a large file, so a test's copy of a repository costs no disk (CI shares it): tests
    rewrite configs and model.py files, never graphs. A copy where links are refused (another filesystem)."""
    if os.path.getsize(src) > LINK_ABOVE:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return
    shutil.copy2(src, dst)


def copy_served(model_repository: Path, dest: Path, model: str) -> Path:
    """``model``'s Triton models from ``model_repository`` into ``dest`` (only those it has: a Python
    encoder has no postprocess model), its priority lanes too. Large files are hard links
    (``_link_or_copy``): a test that rewrites one must unlink it first."""
    from tembed_serving.contract import lane_name, model_names

    names = model_names(model)
    lanes = [*model_repository.glob(lane_name(model, "*")), *model_repository.glob(lane_name(names["encoder"], "*"))]
    for folder in [*(model_repository / n for n in names.values()), *lanes]:
        if folder.is_dir():  # a lane encoder's version folder is a symlink to the encoder's: kept one
            shutil.copytree(folder, dest / folder.name, symlinks=True, copy_function=_link_or_copy)
    return dest


class LazyFixtures(Mapping):
    """Fixture model folders built on first access (cached on disk by the builders), so a test that
    reads one tokenizer does not wait for every model."""

    def __init__(self, root: Path, names: tuple[str, ...] | None = None) -> None:
        from tembed_fixtures.build import FIXTURES as KNOWN

        self.root, self.names, self._built = root, tuple(names or KNOWN), {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Path:
        if name not in self.names:
            raise KeyError(name)
        with self._lock:
            if name not in self._built:
                from tembed_fixtures.build import build_fixtures

                self._built.update(build_fixtures(self.root, only=[name]))
            return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class LazyProfiles(Mapping):
    def __init__(self, dirs: Mapping[str, Path], names: tuple[str, ...], **kw) -> None:
        self.dirs, self.names, self.kw, self._read = dirs, names, kw, {}

    def __getitem__(self, name: str):
        if name not in self.names:
            raise KeyError(name)
        if name not in self._read:
            from tembed.hf_folder import read_profile

            self._read[name] = read_profile(self.dirs[name], **self.kw)
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@pytest.fixture(scope="session")
def fixture_dirs() -> Mapping[str, Path]:
    return LazyFixtures(FIXTURES)


@pytest.fixture(scope="session")
def profiles(fixture_dirs):
    # max_texts 8 keeps the "too many texts" and client chunking paths cheap to reach.
    return LazyProfiles(fixture_dirs, SERVED, max_texts=8)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, fixture_dirs, profiles) -> Path:
    from tembed.calibration import calibrate_repository
    from tembed.onnx_export import export_onnx, validate_onnx
    from tembed.repository import ServingOptions, write_repository
    from tembed_serving.contract import Layout
    from tembed_serving.runners.torch_model import load_embedding_model

    repo = tmp_path_factory.mktemp("model_repository")
    # No priority lanes in the shared repository: a second encoder per model for every server test;
    # tests/test_lanes.py writes them (repository.write_lanes) on its own copy.
    opts = ServingOptions(priority_lanes=False)
    for name in SERVED:
        folder, profile = fixture_dirs[name], profiles[name]
        written = write_repository(
            profile, repo, tokenizer_file=folder / "tokenizer.json", encoder_file=None, opts=opts
        )
        model = load_embedding_model(folder, profile)
        validate_onnx(model, profile, export_onnx(model, profile, written["encoder"] / "1" / "model.onnx"))
        calibrate_repository(profile, Layout(repo, name))  # embedding_type int8/uint8, as `tembed export` does
    return repo


@pytest.fixture(scope="session")
def server(model_repository, tmp_path_factory):
    from tembed_serving.supervisor import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with GUARD.shared(TritonServer.on_free_ports(model_repository, log_file=log)) as srv:
        yield srv


@pytest.fixture(scope="session")
def clients(server):
    """One gRPC client per served model."""
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(server.grpc_url, name) for name in SERVED}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(scope="session")
def references(fixture_dirs):
    """sentence-transformers on the same folders: an implementation of pooling, prompts and
    tokenization that shares no code with ours."""
    from sentence_transformers import SentenceTransformer

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = SentenceTransformer(str(fixture_dirs[name]), device="cpu")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def rerank_dirs() -> Mapping[str, Path]:
    return LazyFixtures(FIXTURES, RERANKERS)


@pytest.fixture(scope="session")
def rerank_server(rerank_dirs, model_repository, tmp_path_factory):
    """One server: three rerankers and an embedding model."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path_factory.mktemp("rerank-repo")
    for name in RERANKERS:
        result = export_model(rerank_dirs[name], repo, ExportOptions(max_length=MAX_LENGTH, max_texts=16))
        assert result.profile.task == "rerank" and result.max_abs_err < 1e-4
    copy_served(model_repository, repo, EMBEDDER)
    log = tmp_path_factory.mktemp("rerank-triton") / "tritonserver.log"
    with GUARD.shared(TritonServer.on_free_ports(repo, log_file=log)) as srv:
        yield srv


@pytest.fixture
def replicas(model_repository, tmp_path):
    """Two unsupervised tritonservers (a killed one stays down) serving e5 (EMBEDDER), each on its own copy."""
    from tembed_serving.supervisor import TritonServer

    servers = []
    try:
        for i in range(2):
            repo = tmp_path / f"repo{i}"
            copy_served(model_repository, repo, EMBEDDER)
            log = tmp_path / f"tritonserver{i}.log"
            servers.append(TritonServer.on_free_ports(repo, supervise=False, log_file=log).start())
        yield servers
    finally:
        for srv in servers:
            srv.stop()


# --- tiers -------------------------------------------------------------------------------------------

SHARED_SERVERS = {"server", "clients", "rerank_server"}  # the session fixtures above
OWN_PROCESSES = {"replicas"}  # and any fixture of a test module named *_server


def tier_of(item: pytest.Item) -> str | None:
    """``isolated``, ``server`` or None (the fast tier): explicit marks, then the fixtures it uses."""
    if item.get_closest_marker("isolated"):
        return "isolated"
    info = getattr(item, "_fixtureinfo", None)
    shared = False
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in info.name2fixturedefs.get(name, ()) if info else ():
            here = getattr(fixturedef.func, "__module__", "") == __name__
            if here and name in SHARED_SERVERS:
                shared = True
            elif (here and name in OWN_PROCESSES) or (not here and name.endswith("_server")):
                return "isolated"
    return "server" if shared or item.get_closest_marker("server") else None


def pytest_collection_modifyitems(config, items):
    for item in items:  # every collected item, client/tests too
        tier = tier_of(item)
        if tier and not item.get_closest_marker(tier):
            item.add_marker(tier)


def launches_server(argv: list[str]) -> str | None:
    """What ``argv`` starts, if it is tritonserver or one of our server launchers."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "tritonserver":
            return arg
        if arg == "-m" and argv[i + 1 : i + 2] in (["tembed_serving.supervisor"], ["tembed_gateway"]):
            return argv[i + 1]
        if arg == "serve" and i and os.path.basename(argv[i - 1]) == "tembed":
            return "tembed serve"
    return None


class TierGuard:
    """Fails, loudly, a test that starts a tritonserver or a server process outside its tier: in the
    fast tier any, in the server tier any but the shared session servers. ``pytest.fail`` raises an
    exception that no ``except Exception`` (such as a skip on "no tritonserver") swallows."""

    def __init__(self) -> None:
        self.current: tuple[str, str | None] | None = None  # (nodeid, tier) of the running test
        self.sharing = False
        self._mp: pytest.MonkeyPatch | None = None

    @contextlib.contextmanager
    def shared(self, srv):
        """Start ``srv`` as a shared session server, then stop it when the session ends."""
        self.sharing = True
        try:
            srv.start()
        finally:
            self.sharing = False
        try:
            yield srv
        finally:
            srv.stop()

    def check(self, what: str) -> None:
        if self.current is None or threading.current_thread() is not threading.main_thread():
            return  # outside a test, or a supervisor thread restarting a server it already runs
        nodeid, tier = self.current
        if tier == "isolated" or (tier == "server" and self.sharing):
            return
        name = "the fast tier (neither server nor isolated)" if tier is None else "the server tier"
        pytest.fail(
            f"{nodeid} is in {name} but starts {what}. A test that starts processes of its own is "
            "`isolated` (pytestmark, or a fixture named *_server); one on the shared server uses the "
            "`server`, `clients` or `rerank_server` fixture (tests/conftest.py).",
            pytrace=False,
        )

    def install(self) -> None:
        from tembed_serving import supervisor

        start, root, popen_init = supervisor.TritonServer.start, supervisor.pytriton_root, subprocess.Popen.__init__
        guard = self

        def guarded_start(srv, *a, **kw):
            guard.check(f"a tritonserver on {srv.model_repository}")
            return start(srv, *a, **kw)

        def guarded_root():  # where every real tritonserver binary is found (docker/entrypoint.sh runs too)
            guard.check("a tritonserver (it looks up the binary: tembed_serving.supervisor.pytriton_root)")
            return root()

        def guarded_popen(proc, *a, **kw):
            args = a[0] if a else kw.get("args", ())
            argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
            what = launches_server([os.fsdecode(x) for x in argv])
            if what:
                guard.check(f"a server process ({what})")
            return popen_init(proc, *a, **kw)

        self._mp = pytest.MonkeyPatch()
        self._mp.setattr(supervisor.TritonServer, "start", guarded_start)
        self._mp.setattr(supervisor, "pytriton_root", guarded_root)
        self._mp.setattr(subprocess.Popen, "__init__", guarded_popen)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if self._mp is None:
            self.install()
        self.current = (item.nodeid, tier_of(item))
        try:
            return (yield)
        finally:
            self.current = None

    def pytest_unconfigure(self, config):
        if self._mp is not None:
            self._mp.undo()


GUARD = TierGuard()


def pytest_configure(config):
    # Registered as a plugin, not as this conftest's hooks: those would see only tests/ items.
    if not config.pluginmanager.is_registered(GUARD):
        config.pluginmanager.register(GUARD, "tembed-tier-guard")
