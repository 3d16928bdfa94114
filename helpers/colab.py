"""Bring a Colab runtime to the Keras this book was run with, and add a chapter's extras, without
moving anything the installed TensorFlow pins or the running kernel has already imported.

Each chapter's first cell calls `install_tested_keras(...)` right after pip-installing this package.
Keras is pure Python and the kernel has not imported it yet, so no restart is needed. pip gets
constraints: TensorFlow itself `==` its installed version, TensorFlow's own requirements (its
Requires-Dist, markers evaluated), `==` for every distribution the kernel has already imported
(psutil, IPython, ...), whose new files the running kernel would not see, and every requirement of
the other installed packages that holds now. A package that would have to move one of them is either
backtracked by pip to a version that fits, or the install fails with pip's own account of the conflict.
"""
import importlib.metadata
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:  # TensorFlow requires packaging; pip always carries a copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement

DISTRIBUTION = "ckpt-vs-savedmodel-helpers"
TESTED_KERAS_EXTRA = "tested-keras"  # pyproject.toml: the Keras every stored output comes from


def normalized(name):
    """A distribution name as pip compares them (PEP 503): `ML_Dtypes` and `ml-dtypes` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_of(distribution, extra=""):
    """The Requires-Dist of a distribution whose markers hold here, for `extra` ('' = none)."""
    environment = {**default_environment(), "extra": extra}
    wanted = []
    for line in distribution.requires or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        if extra and (requirement.marker is None or "extra" not in str(requirement.marker)):
            continue  # a base requirement, not one the extra adds
        wanted.append(requirement)
    return wanted


def tensorflow_distributions(packages=None, distributions=None):
    """The installed distributions that provide the `tensorflow` package (tensorflow, tensorflow-cpu, ...)."""
    packages = importlib.metadata.packages_distributions() if packages is None else packages
    names = {normalized(name) for name in packages.get("tensorflow", [])}
    if distributions is None:
        return [importlib.metadata.distribution(name) for name in sorted(names)]
    return [d for d in distributions if normalized(d.metadata["Name"]) in names]


def imported_distributions(modules=None, packages=None):
    """{name: version} of the distributions whose top-level modules the running interpreter has imported."""
    modules = sys.modules if modules is None else modules
    packages = importlib.metadata.packages_distributions() if packages is None else packages
    found = {}
    for module in list(modules):
        if "." in module:
            continue
        for name in packages.get(module, []):
            if normalized(name) == DISTRIBUTION:
                continue
            try:
                found[normalized(name)] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def constraints(modules=None, packages=None, distributions=None):
    """pip constraint lines, so that installing moves nothing the reader's runtime depends on.

    - TensorFlow `==` its installed version, and every requirement TensorFlow declares;
    - `==` for every distribution the running kernel has imported (a new version would need a restart);
    - every requirement of another installed distribution that holds now (grpcio-status's protobuf < 6,
      numba's numpy < 2.3, ...): TensorFlow 2.20 no longer caps protobuf, Colab's other packages do.
    Raises RuntimeError when TensorFlow is not installed (the book uses the reader's own)."""
    packages = importlib.metadata.packages_distributions() if packages is None else packages
    distributions = list(importlib.metadata.distributions()) if distributions is None else distributions
    versions = {}
    for distribution in distributions:
        versions.setdefault(normalized(distribution.metadata["Name"]), distribution.version)
    tensorflows = tensorflow_distributions(packages, distributions)
    if not tensorflows:
        raise RuntimeError("TensorFlow is not installed here: this book uses the TensorFlow you have "
                           "(Colab's, or `pip install tensorflow`), so install it first")
    pins = {normalized(tf.metadata["Name"]): f"{normalized(tf.metadata['Name'])}=={tf.version}" for tf in tensorflows}
    for name, version in imported_distributions(modules, packages).items():
        pins.setdefault(name, f"{name}=={version}")  # stricter than any range below
    ranges = {}
    for distribution in [*tensorflows, *distributions]:
        own = distribution in tensorflows
        for requirement in requirements_of(distribution):
            key = normalized(requirement.name)
            if key in pins or requirement.url or not requirement.specifier:
                continue
            if not own and not (key in versions and requirement.specifier.contains(versions[key], prereleases=True)):
                continue  # not installed, or already unmet: nothing that works now depends on it
            ranges.setdefault(key, {})[str(requirement.specifier)] = None
    lines = {**{key: f"{key}{','.join(specifiers)}" for key, specifiers in ranges.items()}, **pins}
    return [lines[key] for key in sorted(lines)]


def book_requirements(*extras):
    """The book's tested Keras and the requirements of `extras`, read from this package's metadata."""
    book = importlib.metadata.distribution(DISTRIBUTION)
    declared = set(book.metadata.get_all("Provides-Extra") or [])
    unknown = [extra for extra in extras if normalized(extra) not in {normalized(e) for e in declared}]
    if unknown:
        raise ValueError(f"{DISTRIBUTION} has no extra {', '.join(map(repr, unknown))}; "
                         f"it has {', '.join(sorted(declared))}")
    wanted = []
    for extra in (TESTED_KERAS_EXTRA, *extras):
        for requirement in requirements_of(book, extra=normalized(extra)):
            line = f"{requirement.name}{requirement.specifier}"
            if line not in wanted:
                wanted.append(line)
    return wanted


def installed_versions():
    """{normalized name: version} of every installed distribution, read afresh."""
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions.setdefault(normalized(name), distribution.version)
    return versions


def what_changed(before, after, limit=6):
    """One line naming each upgrade, downgrade and addition ('keras 3.13.2 -> 3.15.1; added onnx 1.22.0')."""
    moved = [f"{name} {before[name]} -> {after[name]}" for name in sorted(after)
             if name in before and before[name] != after[name]]
    added = [f"{name} {after[name]}" for name in sorted(after) if name not in before]
    removed = [name for name in sorted(before) if name not in after]
    parts = []
    if moved:
        parts.append(", ".join(moved))
    if added:
        shown = ", ".join(added[:limit]) + (f" and {len(added) - limit} more" if len(added) > limit else "")
        parts.append(f"added {shown}")
    if removed:
        parts.append(f"removed {', '.join(removed)}")
    return "; ".join(parts) or "nothing changed"


def pip_conflict(output):
    """The lines of pip's output that say why it could not resolve (or what it left inconsistent)."""
    keep = [line.strip() for line in output.splitlines()
            if re.search(r"conflict is caused by|ResolutionImpossible|Cannot install|depends on|"
                         r"requires .*but you have|user requested|No matching distribution|"
                         r"Could not find a version", line)]
    return "\n".join(dict.fromkeys(keep)) or output.strip()[-2000:]


# Installed alone first; then its requirements under the same constraints, except those named here
# that the installed versions do not already meet. Colab (Python 3.13, so kserve 0.21 only): kserve
# asks protobuf>=6.33.5 and psutil>=5.9.6 while Colab's packages hold protobuf below 6 and the kernel
# has psutil 5.9.5 imported (grpcio-tools, for code generation only, asks protobuf 6 too). Chapters 7
# and 13 run KServe's REST server on Colab's protobuf 5.29 in the Colab lane. Installing it alone first
# saves pip a resolution that would fail. A requirement on a distribution the kernel has imported (or
# on TensorFlow) that the installed version does not meet is left out too: it could not move anyway.
WITHOUT_DEPENDENCIES = {"kserve": ("protobuf", "psutil", "grpcio-tools")}


def pip_install(requirements, constraint_lines, run, no_deps=False):
    """Run pip install under the constraints; return (return code, everything pip printed)."""
    with tempfile.TemporaryDirectory() as folder:
        constraint_file = Path(folder) / "constraints.txt"
        constraint_file.write_text("\n".join(constraint_lines) + "\n")
        # not --quiet: pip explains a conflict ("The conflict is caused by: ...") only at its normal level;
        # --no-compile: Python compiles what it imports, not all of kubernetes' client ahead of time
        result = run([sys.executable, "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check",
                      "--no-input", "--no-compile", *(["--no-deps"] if no_deps else []),
                      "--constraint", str(constraint_file), *requirements], capture_output=True, text=True)
    return result.returncode, (result.stdout or "") + (result.stderr or "")


def without_dependencies(wanted, constraint_lines, run):
    """Install the WITHOUT_DEPENDENCIES packages of `wanted` alone, then the rest of `wanted` and their
    requirements, leaving out a listed requirement that the installed version does not already meet;
    return (return code, pip's output, the requirements left out)."""
    alone = [line for line in wanted if normalized(Requirement(line).name) in WITHOUT_DEPENDENCIES]
    code, output = pip_install(alone, constraint_lines, run, no_deps=True)
    if code:
        return code, output, []
    versions = installed_versions()
    pinned = {normalized(line.split("==")[0]) for line in constraint_lines if "==" in line}  # TF, imported
    rest, skipped = [line for line in wanted if line not in alone], []
    for line in alone:
        name = normalized(Requirement(line).name)
        for requirement in requirements_of(importlib.metadata.distribution(name)):
            key = normalized(requirement.name)
            if (key in WITHOUT_DEPENDENCIES[name] or key in pinned) and not (
                    key in versions and requirement.specifier.contains(versions[key], prereleases=True)):
                skipped.append(f"{requirement.name}{requirement.specifier}")
            else:
                extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
                rest.append(f"{requirement.name}{extras}{requirement.specifier}")
    code, more = pip_install(rest, constraint_lines, run)
    return code, output + more, skipped


def install_tested_keras(*extras, run=subprocess.run):
    """pip-install the book's tested Keras and `extras` under TensorFlow's and the kernel's pins; print one line.

    Raises RuntimeError naming the conflict when pip cannot resolve, and when Keras itself is already
    imported (then the runtime must be restarted first, because a module in memory stays old)."""
    wanted = book_requirements(*extras)
    if "keras" in sys.modules:
        installed = importlib.metadata.version("keras")
        if not any(Requirement(line).name == "keras" and installed in Requirement(line).specifier
                   for line in wanted):
            raise RuntimeError(f"Keras {installed} is already imported in this runtime, so a new Keras "
                               "would not take effect: restart the runtime and run this cell first")
    before = installed_versions()
    start = time.perf_counter()
    constraint_lines = constraints()
    if any(normalized(Requirement(line).name) in WITHOUT_DEPENDENCIES for line in wanted):
        code, output, skipped = without_dependencies(wanted, constraint_lines, run)
    else:
        (code, output), skipped = pip_install(wanted, constraint_lines, run), []
    seconds = time.perf_counter() - start
    if code:
        raise RuntimeError(f"pip could not install {' '.join(wanted)} without moving what the installed "
                           f"TensorFlow or the running kernel needs:\n{pip_conflict(output)}")
    after = installed_versions()
    note = f"; without its requirements {', '.join(skipped)} (this runtime keeps its own)" if skipped else ""
    print(f"Installed in {seconds:.0f} s: {what_changed(before, after)}{note}")
    unexpected = [line for line in output.splitlines() if "but you have" in line or "which is not installed" in line]
    unexpected = [line for line in unexpected  # not the requirements skipped on purpose
                  if not any(re.match(rf"{re.escape(name)} \S+ requires ({'|'.join(map(re.escape, names))})\b",
                                      normalized(line.split(",")[0]))
                             for name, names in WITHOUT_DEPENDENCIES.items())]
    if unexpected:  # pip installed, but left another package's requirement unmet
        print("pip reports:\n" + "\n".join(unexpected), file=sys.stderr)
    return before, after
