"""Writing clips for the tests: frames as an animated GIF or a folder of numbered PNGs, as a user would hand them."""

from pathlib import Path

from PIL import Image

from mmrope.data.videos import FRAME_EXTENSIONS


def frames_to_gif(frames: list[Image.Image], path: str | Path, fps: float = 2.0) -> Path:
    """Write ``frames`` as a looping GIF, each frame shown for 1000 / ``fps`` ms.

    GIF stores durations in hundredths of a second and up to 256 colours per frame, and Pillow merges a frame
    identical to the one before it into that frame (adding their durations), so a round trip of arbitrary frames
    is not exact.
    """
    if not frames:
        raise ValueError("frames_to_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=list(frames[1:]),
                   duration=round(1000 / fps), loop=0, disposal=2)  # disposal 2: clear to background between frames
    return path


def frames_to_folder(frames: list[Image.Image], folder: str | Path) -> Path:
    """Write ``frames`` into ``folder`` as 0000.png, 0001.png, ...; the folder is created if needed.

    Refuses a folder that already holds frame images: frames left from an older, longer clip would join this one.
    """
    if not frames:
        raise ValueError("frames_to_folder needs at least one frame")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = [p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")]
    if old:
        raise FileExistsError(f"{folder}: already holds {len(old)} frame images (e.g. {min(old)}); use an empty folder")
    digits = max(4, len(str(len(frames) - 1)))
    for i, frame in enumerate(frames):
        frame.save(folder / f"{i:0{digits}d}.png")
    return folder
