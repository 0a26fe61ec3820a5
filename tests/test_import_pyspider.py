"""``spiderflow import-pyspider``: a pyspider deployment's databases, as pyspider wrote them, into spiderflow.

The pyspider databases are built here with pyspider's own CREATE TABLE statements (from
pyspider/database/sqlite/*.py and pyspider/database/mysql/*.py, and the SQLAlchemy backend's
layout for PostgreSQL) and rows written the way pyspider wrote them (JSON text, MySQL BLOBs).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy as sa
from conftest import require_service

from spiderflow.exceptions import ConfigError
from spiderflow.importer.pyspider_db import source_url
from spiderflow.message import ProjectStatus, TaskStatus
from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "pyspider_scripts")

# -- pyspider's schemas, verbatim ------------------------------------------------------------------------

SQLITE_PROJECTDB = '''CREATE TABLE IF NOT EXISTS `projectdb` (
                name PRIMARY KEY,
                `group`,
                status, script, comments,
                rate, burst, updatetime
                )'''
SQLITE_TASKDB = '''CREATE TABLE IF NOT EXISTS `taskdb_%s` (
                taskid PRIMARY KEY,
                project,
                url, status,
                schedule, fetch, process, track,
                lastcrawltime, updatetime
                )'''
SQLITE_TASKDB_INDEX = '''CREATE INDEX `status_%s_index` ON %s (status)'''
SQLITE_RESULTDB = '''CREATE TABLE IF NOT EXISTS `resultdb_%s` (
                taskid PRIMARY KEY,
                url,
                result,
                updatetime
                )'''
MYSQL_PROJECTDB = '''CREATE TABLE IF NOT EXISTS %s (
            `name` varchar(64) PRIMARY KEY,
            `group` varchar(64),
            `status` varchar(16),
            `script` TEXT,
            `comments` varchar(1024),
            `rate` float(11, 4),
            `burst` float(11, 4),
            `updatetime` double(16, 4)
            ) ENGINE=InnoDB CHARSET=utf8'''
MYSQL_TASKDB = '''CREATE TABLE IF NOT EXISTS %s (
            `taskid` varchar(64) PRIMARY KEY,
            `project` varchar(64),
            `url` varchar(1024),
            `status` int(1),
            `schedule` BLOB,
            `fetch` BLOB,
            `process` BLOB,
            `track` BLOB,
            `lastcrawltime` double(16, 4),
            `updatetime` double(16, 4),
            INDEX `status_index` (`status`)
            ) ENGINE=InnoDB CHARSET=utf8'''
MYSQL_RESULTDB = '''CREATE TABLE %s (
            `taskid` varchar(64) PRIMARY KEY,
            `url` varchar(1024),
            `result` MEDIUMBLOB,
            `updatetime` double(16, 4)
            ) ENGINE=InnoDB CHARSET=utf8'''

# -- a small deployment -------------------------------------------------------------------------------------

def _read(name: str) -> str:
    with open(os.path.join(SCRIPTS, name), encoding="utf-8") as fh:
        return fh.read()


IMDB_SCRIPT = _read("tutorial_imdb.py")
DOUBAN_SCRIPT = _read("douban_movie.py")
PY2_SCRIPT = 'from pyspider.libs.base_handler import *\n\nclass Handler(BaseHandler):\n    def on_start(self):\n' \
             '        print "hello"\n'

PROJECTS = [  # name, group, status, script, comments, rate, burst, updatetime
    ("tutorial_imdb", None, "RUNNING", IMDB_SCRIPT, None, 1.0, 3.0, 1420000000.25),
    ("douban_movie", "movies", "STOP", DOUBAN_SCRIPT, "paused: too many 403s", 0.5, 2.0, 1460000000.5),
    ("legacy_py2", "", "TODO", PY2_SCRIPT, "", 1.0, 10.0, 1400000000.0),
    ("新闻", "", "TODO", IMDB_SCRIPT, "", 1.0, 3.0, 1400000000.0),
]
IMDB = "http://www.imdb.com/title/"
RESULTS = {
    "tutorial_imdb": [
        ("7303ddebe20d0d4abb4dbb05d6fbd4a5", IMDB + "tt0111161/",
         {"url": IMDB + "tt0111161/", "title": "The Shawshank Redemption", "rating": "9.3",
          "director": ["Frank Darabont"]}, 1420000100.5),
        ("3bb35ab5eac2f1d3c1d0e0e6e4fa3e9b", IMDB + "tt0068646/",
         {"url": IMDB + "tt0068646/", "title": "The Godfather", "rating": "9.2",
          "director": ["Francis Ford Coppola"]}, 1420000200.0),
    ],
    "douban_movie": [
        ("cf5d359d1e56", "http://movie.douban.com/subject/1291546/",
         {"title": "霸王别姬", "rating": 9.6, "tag": "剧情"}, 1460000100.0),
    ],
}
TRACK_OK = {"fetch": {"ok": True, "redirect_url": None, "time": 0.43, "error": None, "status_code": 200,
                      "encoding": "utf-8", "headers": {"ETag": '"abc"', "Last-Modified": "Sat, 01 Jan 2000"},
                      "content": None},
            "process": {"ok": True, "time": 0.01, "follows": 0, "outputs": 1, "logs": "", "exception": None},
            "save": None}


def _md5(text: str) -> str:
    import hashlib
    return hashlib.md5(text.encode()).hexdigest()


START = "http://www.imdb.com/search/title?count=100&title_type=feature,tv_series,tv_movie&ref_=nv_ch_mm_1"
TASKS = {  # project -> [(taskid, url, status, schedule, fetch, process, track, lastcrawltime, updatetime)]
    "tutorial_imdb": [
        ("on_start", "data:,on_start", 2, {"age": 86400, "priority": 0}, {}, {"callback": "on_start"},
         TRACK_OK, 1420000000.0, 1420000000.0),
        (_md5(START), START, 2, {"age": 86400}, {}, {"callback": "index_page"}, TRACK_OK,
         1420000050.0, 1420000050.0),
        (_md5(IMDB + "tt0111161/"), IMDB + "tt0111161/", 2, {}, {}, {"callback": "detail_page"}, TRACK_OK,
         1420000100.0, 1420000100.5),
        (_md5(IMDB + "tt0068646/"), IMDB + "tt0068646/", 3, {"retries": 3, "retried": 3}, {},
         {"callback": "detail_page"}, {"fetch": {"ok": False, "status_code": 599, "error": "timeout"},
                                       "process": {"ok": False}}, 1420000150.0, 1420000150.0),
        # not fetched yet when pyspider stopped: spiderflow crawls it on
        (_md5(IMDB + "tt0108052/"), IMDB + "tt0108052/", 1, {"priority": 1, "exetime": 0},
         {"headers": {"Referer": START}, "last_modifed": "x", "save": {"from": "page1"}},
         {"callback": "detail_page", "process_time_limit": 30}, {}, None, 1420000300.0),
    ],
}


def build_sqlite(directory: str, projects=PROJECTS, results=RESULTS, tasks=TASKS) -> str:
    """pyspider's data directory: project.db, task.db and result.db, written as pyspider wrote them."""
    os.makedirs(directory, exist_ok=True)
    with sqlite3.connect(os.path.join(directory, "project.db")) as conn:
        conn.execute(SQLITE_PROJECTDB)
        conn.executemany("INSERT INTO `projectdb` (`name`, `group`, `status`, `script`, `comments`, `rate`, "
                         "`burst`, `updatetime`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", projects)
    with sqlite3.connect(os.path.join(directory, "result.db")) as conn:
        for project, rows in results.items():
            conn.execute(SQLITE_RESULTDB % project)
            conn.executemany(f"REPLACE INTO `resultdb_{project}` (`taskid`, `url`, `result`, `updatetime`) "
                             "VALUES (?, ?, ?, ?)", [(t, u, json.dumps(r), ut) for t, u, r, ut in rows])
    with sqlite3.connect(os.path.join(directory, "task.db")) as conn:
        for project, rows in tasks.items():
            conn.execute(SQLITE_TASKDB % project)
            conn.execute(SQLITE_TASKDB_INDEX % (f"taskdb_{project}", f"`taskdb_{project}`"))
            conn.executemany(
                f"INSERT INTO `taskdb_{project}` (`taskid`, `project`, `url`, `status`, `schedule`, `fetch`, "
                "`process`, `track`, `lastcrawltime`, `updatetime`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(t, project, u, s, json.dumps(sc), json.dumps(f), json.dumps(p), json.dumps(tr), lc, ut)
                 for t, u, s, sc, f, p, tr, lc, ut in rows])
    return directory


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIDERFLOW_")}
    return subprocess.run([sys.executable, "-m", "spiderflow.cli", "--log-level", "WARNING", *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd, check=False)


def spiderflow_dbs(data_dir: str):
    settings = Settings(data_dir=data_dir)
    return (connect_projectdb(settings.db_url("projectdb")), connect_resultdb(settings.db_url("resultdb")),
            connect_taskdb(settings.db_url("taskdb")))


def _summary(out: str) -> str:
    return [line for line in out.splitlines() if line.startswith(("imported:", "would import:"))][-1]


# -- SQLite, the pyspider default --------------------------------------------------------------------------------

def test_import_sqlite_deployment_exactly(tmp_path):
    pyspider = build_sqlite(str(tmp_path / "pyspider-data"))
    target = str(tmp_path / "sf")
    out = run_cli("--data-dir", target, "import-pyspider", "--pyspider-data", pyspider)
    assert out.returncode == 0, out.stderr
    assert _summary(out.stdout) == ("imported: projects 3 (3 added), results 3, "
                                    "tasks 5 (5 new, 0 already in spiderflow)")
    lines = out.stdout.splitlines()
    py2 = next(line for line in lines if line.startswith("legacy_py2"))
    assert "added" in py2 and "its script fails in spiderflow: SyntaxError" in py2
    assert any("project '新闻'" in line and "invalid project name" in line for line in lines)
    assert not any(line.startswith(("tutorial_imdb", "douban_movie")) and "fails" in line for line in lines)

    projectdb, resultdb, taskdb = spiderflow_dbs(target)
    try:
        rows = {p["name"]: p for p in projectdb.list()}
        assert sorted(rows) == ["douban_movie", "legacy_py2", "tutorial_imdb"]
        imdb, douban = rows["tutorial_imdb"], rows["douban_movie"]
        assert (imdb["script"], imdb["status"], imdb["group"], imdb["comments"], imdb["rate"], imdb["burst"]) == \
            (IMDB_SCRIPT, ProjectStatus.RUNNING, "", "", 1.0, 3.0)
        assert (douban["script"], douban["status"], douban["group"], douban["comments"], douban["rate"],
                douban["burst"]) == (DOUBAN_SCRIPT, ProjectStatus.STOP, "movies", "paused: too many 403s", 0.5, 2.0)
        assert (rows["legacy_py2"]["script"], rows["legacy_py2"]["burst"]) == (PY2_SCRIPT, 10.0)

        for project, expected in RESULTS.items():
            stored = sorted((r["taskid"], r["url"], r["result"], r["updatetime"]) for r in resultdb.select(project))
            assert stored == sorted(expected)

        tasks = {t["taskid"]: t for t in taskdb.select("tutorial_imdb")}
        assert len(tasks) == 5
        assert {tid: t["status"] for tid, t in tasks.items()} == {
            "on_start": TaskStatus.SUCCESS, _md5(START): TaskStatus.SUCCESS,
            _md5(IMDB + "tt0111161/"): TaskStatus.SUCCESS, _md5(IMDB + "tt0068646/"): TaskStatus.FAILED,
            _md5(IMDB + "tt0108052/"): TaskStatus.ACTIVE}
        index = taskdb.get_task("tutorial_imdb", _md5(START))
        assert (index.url, index.schedule.age, index.process.callback, index.lastcrawltime) == \
            (START, 86400, "index_page", 1420000050.0)
        assert index.track.fetch == {"ok": True, "time": 0.43, "error": None, "status_code": 200,
                                     "encoding": "utf-8", "etag": '"abc"', "last_modified": "Sat, 01 Jan 2000"}
        assert index.track.process == {"ok": True, "time": 0.01, "follows": 0, "results": 1, "logs": "",
                                       "exception": None}
        failed = taskdb.get_task("tutorial_imdb", _md5(IMDB + "tt0068646/"))
        assert (failed.schedule.retries, failed.schedule.retried) == (3, 3)
        active = taskdb.get_task("tutorial_imdb", _md5(IMDB + "tt0108052/"))
        assert (active.schedule.priority, active.fetch.headers, active.fetch.last_modified, active.fetch.save,
                active.process.callback, active.process.time_limit, active.lastcrawltime) == \
            (1, {"Referer": START}, "x", {"from": "page1"}, "detail_page", 30.0, None)
    finally:
        for db in (projectdb, resultdb, taskdb):
            db.close()


def test_import_again_changes_nothing_then_only_what_changed(tmp_path):
    pyspider = build_sqlite(str(tmp_path / "py"))
    target = str(tmp_path / "sf")
    assert run_cli("--data-dir", target, "import-pyspider", "--pyspider-data", pyspider).returncode == 0
    projectdb, resultdb, taskdb = spiderflow_dbs(target)
    try:
        before = (projectdb.list(), {p: list(resultdb.select(p)) for p in RESULTS}, list(taskdb.select()))
        out = run_cli("--data-dir", target, "import-pyspider", "--pyspider-data", pyspider)
        assert out.returncode == 0, out.stderr
        assert _summary(out.stdout) == ("imported: projects 3 (3 unchanged), results 3, "
                                        "tasks 5 (0 new, 5 already in spiderflow)")
        after = (projectdb.list(), {p: list(resultdb.select(p)) for p in RESULTS}, list(taskdb.select()))
        assert after == before           # not even an updatetime moved

        with sqlite3.connect(os.path.join(pyspider, "project.db")) as conn:
            conn.execute("UPDATE projectdb SET script = ?, status = 'RUNNING' WHERE name = 'douban_movie'",
                         (DOUBAN_SCRIPT + "\n# v2\n",))
        out = run_cli("--data-dir", target, "import-pyspider", "--pyspider-data", pyspider, "--no-tasks")
        assert _summary(out.stdout) == "imported: projects 3 (1 updated, 2 unchanged), results 3"
        douban = projectdb.get("douban_movie")
        assert (douban["script"].endswith("# v2\n"), douban["status"], douban["rate"]) == \
            (True, ProjectStatus.RUNNING, 0.5)
        assert len(list(taskdb.select())) == 5
    finally:
        for db in (projectdb, resultdb, taskdb):
            db.close()


def test_dry_run_writes_nothing_and_says_what_it_would_do(tmp_path):
    pyspider = build_sqlite(str(tmp_path / "py"))
    target = tmp_path / "sf"
    before = {p: os.path.getmtime(os.path.join(pyspider, p)) for p in os.listdir(pyspider)}
    out = run_cli("--data-dir", str(target), "import-pyspider", "--pyspider-data", pyspider, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("dry run: nothing is written")
    assert _summary(out.stdout) == ("would import: projects 3 (3 would add), results 3, "
                                    "tasks 5 (5 new, 0 already in spiderflow)")
    assert not target.exists()
    assert {p: os.path.getmtime(os.path.join(pyspider, p)) for p in os.listdir(pyspider)} == before

    assert run_cli("--data-dir", str(target), "import-pyspider", "--pyspider-data", pyspider,
                   "--project", "tutorial_imdb").returncode == 0
    out = run_cli("--data-dir", str(target), "import-pyspider", "--pyspider-data", pyspider, "--dry-run", "--json")
    report = json.loads(out.stdout)
    assert {p["name"]: p["action"] for p in report["projects"]} == {
        "douban_movie": "added", "legacy_py2": "added", "tutorial_imdb": "unchanged", "新闻": "skipped"}
    assert report["results"] == {"douban_movie": 1, "tutorial_imdb": 2}
    assert report["tasks"] == {"tutorial_imdb": {"ACTIVE": 1, "FAILED": 1, "SUCCESS": 3}}
    assert (report["totals"]["tasks_new"], report["totals"]["tasks_existing"]) == (0, 5)
    projectdb = connect_projectdb(Settings(data_dir=str(target)).db_url("projectdb"))
    try:
        assert [p["name"] for p in projectdb.list()] == ["tutorial_imdb"]
    finally:
        projectdb.close()


def test_status_override_and_project_filter(tmp_path):
    pyspider = build_sqlite(str(tmp_path / "py"))
    target = str(tmp_path / "sf")
    out = run_cli("--data-dir", target, "import-pyspider", "--projectdb", f"sqlite+projectdb:///{pyspider}/project.db",
                  "--resultdb", f"sqlite+resultdb:///{pyspider}/result.db", "--project", "tutorial_imdb",
                  "--status", "STOP", "--no-check")
    assert out.returncode == 0, out.stderr
    assert _summary(out.stdout) == "imported: projects 1 (1 added), results 2"
    projectdb, resultdb, taskdb = spiderflow_dbs(target)
    try:
        assert [(p["name"], p["status"]) for p in projectdb.list()] == [("tutorial_imdb", ProjectStatus.STOP)]
        assert resultdb.projects() == {"tutorial_imdb"} and taskdb.projects() == set()
    finally:
        for db in (projectdb, resultdb, taskdb):
            db.close()


@pytest.mark.parametrize("args, message", [
    ((), "name pyspider's databases"),
    (("--projectdb", "{tmp}/nope.db"), "no such SQLite file"),
    (("--projectdb", "sqlite+projectdb:///{tmp}/nope.db"), "no such SQLite file"),
    (("--projectdb", "mongodb+projectdb://127.0.0.1/projectdb"), "pyspider's mongodb backend"),
    (("--projectdb", "sqlite+resultdb:///{tmp}/py/result.db"), "is pyspider's resultdb URL, not its projectdb"),
    (("--projectdb", "oracle://u@h/db"), "unsupported database 'oracle'"),
    (("--projectdb", "{tmp}/py/result.db"), "has no table 'projectdb'"),
    (("--resultdb", "{tmp}/py/project.db"), "has no pyspider resultdb tables"),
    (("--pyspider-data", "{tmp}/empty"), "holds none of pyspider's"),
])
def test_errors_are_clear(tmp_path, args, message):
    build_sqlite(str(tmp_path / "py"))
    (tmp_path / "empty").mkdir()
    out = run_cli("--data-dir", str(tmp_path / "sf"), "import-pyspider", *(a.format(tmp=tmp_path) for a in args))
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "sf").exists()


@pytest.mark.parametrize("url, role, expected", [
    ("sqlite+projectdb:///{tmp}/project.db", "projectdb", "sqlite:///file:{tmp}/project.db?mode=ro&uri=true"),
    ("sqlalchemy+sqlite+taskdb:///{tmp}/project.db", "taskdb", "sqlite:///file:{tmp}/project.db?mode=ro&uri=true"),
    ("mysql+taskdb://root:pw@127.0.0.1:3306", "taskdb", "mysql+pymysql://root:pw@127.0.0.1:3306/taskdb"),
    ("mysql+resultdb://root@db.example/results", "resultdb", "mysql+pymysql://root@db.example/results"),
    ("sqlalchemy+mysql+mysqlconnector+projectdb://u:p@h/pdb", "projectdb", "mysql+pymysql://u:p@h/pdb"),
    ("sqlalchemy+postgresql+psycopg2+resultdb://u@h:5433/r", "resultdb", "postgresql+psycopg://u@h:5433/r"),
    ("postgresql://u@h/r", "resultdb", "postgresql+psycopg://u@h/r"),
])
def test_pyspider_url_forms(tmp_path, url, role, expected):
    (tmp_path / "project.db").write_bytes(b"")
    parsed = source_url(url.format(tmp=tmp_path), role)
    assert parsed == sa.make_url(expected.format(tmp=tmp_path))


def test_unknown_pyspider_form_is_refused():
    with pytest.raises(ConfigError, match="pyspider's forms are"):
        source_url("redis2+taskdb://h/0", "taskdb")


# -- the imported project crawls on in spiderflow -------------------------------------------------------------------

def _sites():
    spec = importlib.util.spec_from_file_location("pyspider_sites", os.path.join(SCRIPTS, "_sites.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imported_project_resumes_its_crawl(tmp_path):
    """Only the task pyspider had not fetched yet is fetched: the done ones are not due before their age."""
    from spiderflow.fetcher import Fetcher
    from spiderflow.processor import Processor
    from spiderflow.scheduler import OneScheduler

    pyspider = build_sqlite(str(tmp_path / "py"))
    target = str(tmp_path / "sf")
    assert run_cli("--data-dir", target, "import-pyspider", "--pyspider-data", pyspider).returncode == 0
    sites = _sites()
    proxy = sites.SiteProxy()
    settings = Settings(data_dir=target, proxy=proxy.url)
    projectdb, resultdb, taskdb = spiderflow_dbs(target)
    try:
        fetcher = Fetcher(None, None, settings)
        processor = Processor(projectdb=projectdb, settings=settings)

        def process(task, result):
            outcome = processor.process_checked(task, result)
            return outcome.status_pack, outcome.new_tasks, outcome.results

        one = OneScheduler(projectdb=projectdb, taskdb=taskdb, resultdb=resultdb, fetcher=fetcher, process=process,
                           project="tutorial_imdb", settings=settings, counter_file=None)

        async def go():
            try:
                await one.run(burst=True)
            finally:
                fetcher.close()
        asyncio.run(go())
        assert proxy.requests == [("GET", IMDB + "tt0108052/")]
        assert resultdb.get("tutorial_imdb", _md5(IMDB + "tt0108052/"))["result"] == {
            "url": IMDB + "tt0108052/", "title": "Schindler's List", "rating": "8.9", "director": ["Steven Spielberg"]}
        assert resultdb.count("tutorial_imdb") == 3
        assert taskdb.get_task("tutorial_imdb", _md5(IMDB + "tt0108052/")).status == TaskStatus.SUCCESS
    finally:
        proxy.stop()
        for db in (projectdb, resultdb, taskdb):
            db.close()


# -- MySQL and PostgreSQL, as pyspider wrote them there ---------------------------------------------------------------

@pytest.mark.services
def test_import_mysql_deployment(tmp_path):
    """pyspider's MySQL backend: databases projectdb, taskdb and resultdb; a table per project; JSON in BLOBs."""
    url = sa.make_url(require_service("mysql"))
    names = {role: f"{url.database}_{role}" for role in ("projectdb", "taskdb", "resultdb")}
    server = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            for name in names.values():
                conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                conn.exec_driver_sql(f"USE `{name}`")
            conn.exec_driver_sql(f"USE `{names['projectdb']}`")
            conn.exec_driver_sql(MYSQL_PROJECTDB % "`projectdb`")
            conn.exec_driver_sql("INSERT INTO projectdb VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", PROJECTS[0])
            conn.exec_driver_sql("INSERT INTO projectdb VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", PROJECTS[1])
            conn.exec_driver_sql(f"USE `{names['resultdb']}`")
            for project, rows in RESULTS.items():
                conn.exec_driver_sql(MYSQL_RESULTDB % f"`{project}`")
                for taskid, result_url, result, updatetime in rows:
                    conn.exec_driver_sql(f"REPLACE INTO `{project}` VALUES (%s, %s, %s, %s)",
                                         (taskid, result_url, json.dumps(result).encode(), updatetime))
            conn.exec_driver_sql(f"USE `{names['taskdb']}`")
            conn.exec_driver_sql(MYSQL_TASKDB % "`tutorial_imdb`")
            for t, u, s, sc, f, p, tr, lc, ut in TASKS["tutorial_imdb"]:
                conn.exec_driver_sql("INSERT INTO `tutorial_imdb` VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                                     (t, "tutorial_imdb", u, s, *(json.dumps(x).encode() for x in (sc, f, p, tr)),
                                      lc, ut))
        host = f"root@{url.host}:{url.port or 3306}"
        target = str(tmp_path / "sf")
        args = ["--data-dir", target, "import-pyspider"]
        for role, name in names.items():
            args += [f"--{role}", f"mysql+{role}://{host}/{name}"]
        out = run_cli(*args)
        assert out.returncode == 0, out.stderr
        assert _summary(out.stdout) == ("imported: projects 2 (2 added), results 3, "
                                        "tasks 5 (5 new, 0 already in spiderflow)")
        assert _summary(run_cli(*args).stdout) == ("imported: projects 2 (2 unchanged), results 3, "
                                                   "tasks 5 (0 new, 5 already in spiderflow)")
        projectdb, resultdb, taskdb = spiderflow_dbs(target)
        try:
            douban = projectdb.get("douban_movie")
            assert (douban["script"], douban["group"], douban["status"], douban["comments"], douban["rate"]) == \
                (DOUBAN_SCRIPT, "movies", ProjectStatus.STOP, "paused: too many 403s", 0.5)
            assert sorted((r["taskid"], r["result"]) for r in resultdb.select("douban_movie")) == \
                [("cf5d359d1e56", {"title": "霸王别姬", "rating": 9.6, "tag": "剧情"})]
            assert resultdb.count("tutorial_imdb") == 2
            active = taskdb.get_task("tutorial_imdb", _md5(IMDB + "tt0108052/"))
            assert (active.status, active.fetch.save, active.process.time_limit) == \
                (TaskStatus.ACTIVE, {"from": "page1"}, 30.0)
        finally:
            for db in (projectdb, resultdb, taskdb):
                db.close()
    finally:
        with server.connect() as conn:
            for name in names.values():
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        server.dispose()


@pytest.mark.services
def test_import_postgresql_sqlalchemy_deployment(tmp_path):
    """pyspider's SQLAlchemy backend on PostgreSQL: table projectdb and a result table named by the project."""
    url = require_service("postgresql")
    engine = sa.create_engine(url)
    tables = ["projectdb", "tutorial_imdb"]
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql('CREATE TABLE projectdb (name VARCHAR(64) PRIMARY KEY, "group" VARCHAR(64), '
                                 "status VARCHAR(16), script TEXT, comments VARCHAR(1024), rate FLOAT(11), "
                                 "burst FLOAT(11), updatetime FLOAT(32))")
            conn.exec_driver_sql("INSERT INTO projectdb VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", PROJECTS[0])
            conn.exec_driver_sql("CREATE TABLE tutorial_imdb (taskid VARCHAR(64) PRIMARY KEY, url VARCHAR(1024), "
                                 "result TEXT, updatetime FLOAT(32))")
            for taskid, result_url, result, updatetime in RESULTS["tutorial_imdb"]:
                conn.exec_driver_sql("INSERT INTO tutorial_imdb VALUES (%s, %s, %s, %s)",
                                     (taskid, result_url, json.dumps(result), updatetime))
        parsed = sa.make_url(url)
        rest = parsed.render_as_string(hide_password=False).split("://", 1)[1]
        target = str(tmp_path / "sf")
        out = run_cli("--data-dir", target, "import-pyspider",
                      "--projectdb", f"sqlalchemy+postgresql+projectdb://{rest}",
                      "--resultdb", f"sqlalchemy+postgresql+psycopg2+resultdb://{rest}")
        assert out.returncode == 0, out.stderr
        assert _summary(out.stdout) == "imported: projects 1 (1 added), results 2"
        projectdb, resultdb, taskdb = spiderflow_dbs(target)
        try:
            assert projectdb.get("tutorial_imdb")["script"] == IMDB_SCRIPT
            assert sorted((r["taskid"], r["url"], r["result"], r["updatetime"])
                          for r in resultdb.select("tutorial_imdb")) == sorted(RESULTS["tutorial_imdb"])
        finally:
            for db in (projectdb, resultdb, taskdb):
                db.close()
    finally:
        with engine.begin() as conn:
            for table in tables:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()
