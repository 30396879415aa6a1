# PyInstaller runtime hook of dist/runlog; scripts/runlog.spec puts DEFERRED above this line
# (group -> "package" for a package's files, "module" for a top-level extension module, or
# "metadata" for the packages' .dist-info folders).
#
# The one-file bootloader writes every file of its archive to a new folder at every start. The
# compiled libraries of the packages that start-up never imports (the PostgreSQL drivers,
# cryptography, pydantic-core, ...) are kept instead in one zip, runlog-deferred.zip, and the
# finder below writes a package's files out of it, to where they would have been, when the
# first of its submodules is looked for. Not the package itself: its __init__ is in the PYZ
# archive like any Python module, and it may be looked for without being imported (yarl checks
# whether pydantic_core is installed). The .dist-info folders are written out when
# importlib.metadata first asks the finders for a distribution. README.md, "Deploy", says what
# this buys.


def _install_deferred_binaries() -> None:
    import os
    import sys
    import threading

    home = sys._MEIPASS
    archive = os.path.join(home, "runlog-deferred.zip")
    pending = dict(DEFERRED)  # noqa: F821 (defined above by scripts/runlog.spec)
    lock = threading.Lock()

    def unpack(group: str, fullname: str) -> None:
        with lock:
            if group in pending:
                try:
                    extract(group)
                except Exception as exc:  # a short write, a damaged zip: say which
                    raise ImportError(
                        f"cannot unpack {group} from {archive}: {exc}", name=fullname
                    ) from exc
                del pending[group]

    def extract(group: str) -> None:
        import importlib
        import stat
        import zipfile

        prefix = group + "/"
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if not info.filename.startswith(prefix):
                    continue
                path = os.path.join(home, info.filename[len(prefix) :])
                # Forked workers (serve --workers) share the folder: each file is written under
                # a name of this process's and renamed into place, so a file that is there is
                # whole, and another process that got there first has nothing left to do.
                if os.path.lexists(path):
                    continue
                os.makedirs(os.path.dirname(path), exist_ok=True)
                partial = f"{path}.{os.getpid()}.part"
                if os.path.lexists(partial):  # left by an earlier attempt that failed
                    os.unlink(partial)
                data = zipped.read(info)
                if stat.S_ISLNK(info.external_attr >> 16):
                    os.symlink(data.decode(), partial)
                else:
                    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                os.replace(partial, path)
        # The path finders list a folder once: let them see the new files.
        importlib.invalidate_caches()

    class DeferredBinaries:
        """First on sys.meta_path: writes out a deferred package's files, then lets the usual
        finders find the package."""

        @staticmethod
        def find_spec(fullname: str, path: object = None, target: object = None) -> None:
            top, dot, _ = fullname.partition(".")
            if pending.get(top) in (("package", "module") if dot else ("module",)):
                unpack(top, fullname)

        @staticmethod
        def find_distributions(context: object = None) -> tuple[()]:
            # importlib.metadata asks every finder on sys.meta_path, this one first: write
            # the .dist-info folders out, and let the path finder that follows find them.
            for group, kind in list(pending.items()):
                if kind == "metadata":
                    unpack(group, group)
            return ()

        @staticmethod
        def invalidate_caches() -> None:
            pass

    if os.path.isfile(archive):
        sys.meta_path.insert(0, DeferredBinaries)


_install_deferred_binaries()
