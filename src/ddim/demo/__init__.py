"""`ddim demo`'s work without its web page: settings (``ddim.demo.settings``), the library calls behind each tab
(``ddim.demo.work``) and the files they write (``ddim.demo.outputs``). The Gradio page is ``ddim.demo.ui``,
imported only by `ddim demo` (the ``demo`` extra)."""

from .settings import EditSettings, Guidance, InterpolateSettings, SampleSettings, Sampler, command_line
from .work import Drawn, Edited, Model, compare, interpolate_images, interpolate_seeds, invert_and_edit, items, sample

__all__ = ["Model", "Sampler", "Guidance", "SampleSettings", "InterpolateSettings", "EditSettings", "Drawn", "Edited",
           "sample", "compare", "interpolate_seeds", "interpolate_images", "invert_and_edit", "items", "command_line"]
