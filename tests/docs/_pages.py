"""What each page's code blocks assume: the names a reader already has, declared here.

`prelude` runs before a page's first block, in the namespace the blocks share; `before[i]`
runs just before block i (the reader's part between two blocks, such as submitting the
task a later block signals); `after` runs after the last block and checks that the blocks
did what the page says. Top-level `await` works in all of them. Every page starts with
`import flowmill as fm`, `from datetime import timedelta` and an open `app` on a fresh
SQLite file, as docs/howto pages say. `start_worker(app)` runs a worker beside the blocks.
For shell blocks, `before[i]` is shell text run the same way as a block.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Page:
    prelude: str = ""
    before: dict[int, str] = field(default_factory=dict)
    after: str = ""
    app: bool = True  # declare `app` (pages whose blocks make their own say False)


TYPES = """
from dataclasses import dataclass


@dataclass
class Thumb:
    url: str


@dataclass
class ThumbResult:
    path: str
"""

PAGES: dict[str, Page] = {
    "README.md": Page(app=False),
    "CONTRIBUTING.md": Page(app=False),
    "docs/quickstart.md": Page(
        app=False,
        # the demo database the second block looks around in
        before={1: "flowmill demo --tasks 20 --no-progress --url sqlite:///flowmill-demo.db"},
    ),
    "docs/write-a-backend.md": Page(app=False),
    "docs/howto/define-tasks.md": Page(
        prelude=TYPES,
        after='assert thumbnail.name == "thumbnail" and thumbnail.queue == "images"',
    ),
    "docs/howto/retries.md": Page(
        prelude="""
from dataclasses import dataclass


@dataclass
class Charge:
    cents: int


@dataclass
class Receipt:
    ok: bool
""",
        after="assert charge.retry.max_attempts == 5",
    ),
    "docs/howto/timeouts-and-cancellation.md": Page(
        prelude="""
def sitemap(site):
    return [f"https://{site}/{n}" for n in range(3)]


def fetch(url):
    return url
""",
        after="""
start_worker(app)
h = await app.submit(crawl, "example.org")
assert await h.result(timeout=timedelta(seconds=30)) == 3
""",
    ),
    "docs/howto/submit.md": Page(
        prelude="""
from dataclasses import dataclass


@dataclass
class Resize:
    path: str
    width: int


@dataclass
class Invoice:
    id: int


@app.task(name="resize")
async def resize(req: Resize) -> str:
    return req.path


@app.task(name="send_invoice")
async def send_invoice(inv: Invoice) -> None: ...


@app.task(name="remind")
async def remind(r: str) -> None: ...


@app.task(name="quote")
async def quote(q: str) -> None: ...


req, inv, r, q = Resize("cat.jpg", 128), Invoice(7), "call ana", "EURUSD"
requests = [Resize(f"{n}.jpg", 64) for n in range(3)]
await app.submit(send_invoice, inv, key="invoice-7")
""",
        after="""
assert h.deduplicated
assert len(await app.list_tasks(queue="bulk")) == 1
""",
    ),
    "docs/howto/run-workers.md": Page(),
    "docs/howto/orchestrators.md": Page(
        prelude="""
import time
from dataclasses import dataclass


@dataclass
class ScanDir:
    path: str


@dataclass
class DirReport:
    discovered: int


@dataclass
class ScanRequest:
    roots: list[str]


@dataclass
class ScanMemo:
    started_ns: int


@dataclass
class ScanReport:
    discovered: int
    failed: int


TREE = {"a": ["a/1", "a/2"], "b": ["b/1"]}


def list_subdirs(path):
    return TREE.get(path, [])


def count_files(path):
    return 10
""",
        after="""
start_worker(app)
h = await app.submit(ScanCatalog, ScanRequest(["a", "b"]))
assert await h.result(timeout=timedelta(seconds=30)) == ScanReport(discovered=50, failed=0)
""",
    ),
    "docs/howto/workflows.md": Page(
        prelude="""
from dataclasses import dataclass


@dataclass
class Source:
    url: str


@dataclass
class Params:
    min_rows: int = 0


@dataclass
class Table:
    rows: int


@app.task(name="extract")
async def extract(src: Source) -> int:
    return 3


@app.task(name="transform")
async def transform(p: Params, ctx: fm.Context) -> Table:
    return Table(rows=await ctx.upstream("extract"))


@app.task(name="load_a")
async def load_a() -> str:
    return "a"


@app.task(name="load_b")
async def load_b() -> str:
    return "b"


@app.task(name="summarize")
async def summarize(_: None, ctx: fm.Context) -> str:
    up = await ctx.upstreams()
    return "+".join(sorted(up.results()))


start_worker(app)
""",
        after='assert results[report] == "a+b"',
    ),
    "docs/howto/claimed-tasks.md": Page(
        prelude="""
@app.task(name="generate", queue="llm")
async def generate(prompt: str) -> str:
    raise AssertionError("claimed by the block, not run by a worker")


h = await app.submit(generate, "Say hello")
""",
        after='assert await h.result(timeout=timedelta(seconds=5)) == "Hello world"',
    ),
    "docs/howto/signals-and-waitpoints.md": Page(
        prelude="""
from dataclasses import dataclass


@dataclass
class Doc:
    title: str


links = []


def approve_url(waitpoint_id, token):
    links.append((waitpoint_id, token))
    return f"https://example.com/approve/{waitpoint_id}?token={token}"


def send_email(url):
    pass
""",
        before={
            1: """
start_worker(app)
h = await app.submit(publish, Doc("q3 report"))


async def suspended():
    return (await app.get(h.id)).state is fm.State.SUSPENDED


await eventually(suspended)
wp_id, token = links[-1]
"""
        },
        after="""
assert out.status is fm.DeliverStatus.ACCEPTED
assert await h.result(timeout=timedelta(seconds=30)) == "published"
""",
    ),
    "docs/howto/budgets-and-limits.md": Page(
        prelude="""
from dataclasses import dataclass


@dataclass
class Prompt:
    text: str


@dataclass
class Req:
    q: str


@dataclass
class Resp:
    a: str


p = Prompt("hello")
await app.define_budget("org-7", hard={"tokens": 10_000})
""",
        after="""
assert (await app.budget("org-42")).hard == {"tokens": 1_000_000}
assert (await app.list_tasks(name=complete.name))[0].state is fm.State.READY
""",
    ),
    "docs/howto/inspect.md": Page(
        prelude="""
@app.task(name="flaky", retry=fm.Retry(max_attempts=1))
async def flaky(n: int) -> int:
    if n % 2:
        raise fm.Fail("odd")
    raise RuntimeError("boom")


handles = await app.submit_many(flaky, [1, 2, 3])
await app.worker().run(stop_when_idle=True)
task_id = handles[0].id  # failed
""",
        after="assert (await app.get(task_id)).state is fm.State.READY",
    ),
    "docs/howto/serve.md": Page(),
    "docs/howto/cli.md": Page(app=False),
    "docs/howto/testing.md": Page(app=False),
    "docs/howto/schedules.md": Page(after='assert reports == ["all"]'),
    "docs/howto/deploy.md": Page(app=False),
    "docs/howto/submit-by-name.md": Page(app=False),
    "docs/howto/cli-json.md": Page(),
    "docs/explanation/reaper.md": Page(app=False),
    "docs/howto/integrations.md": Page(app=False),
    "docs/howto/operate.md": Page(
        after="""
assert gone == 0  # nothing in this store is that old
assert app.retention == timedelta(days=7)
""",
    ),
}
