"""User-facing errors. The CLI prints any `VidpostError` as one line (no traceback) and exits with 2."""


class VidpostError(Exception):
    """An error caused by input the user controls: a config, a file, a caption."""


class ConfigError(VidpostError):
    """A config file is missing or holds an unknown key, a wrong type or a bad value."""


class CaptionError(VidpostError):
    """A caption does not follow the ShapeWorld grammar."""


class ClipReadError(VidpostError):
    """A video clip is missing, unreadable or has the wrong shape."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (ffmpeg and loaders put whole banners there)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
