"""Play a media file with GStreamer and count what each stream decoded (prints JSON).

Run with the system Python, which has GStreamer's bindings (the project's
venv does not): ``/usr/bin/python3 tests/harness/gst_player.py FILE``.
``decodebin`` picks the demuxer and decoders a GStreamer player would
(matroskademux, vp8dec, openh264dec, opusdec); each decoded stream ends in
a fakesink that counts buffers and, for audio, seconds of samples. Exits 1
with the error on stderr if the pipeline fails.
"""

from __future__ import annotations

import json
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def play(path: str) -> list[dict[str, object]]:
    Gst.init(None)
    pipeline = Gst.Pipeline.new("player")
    source = Gst.ElementFactory.make("filesrc")
    source.set_property("location", path)
    decoder = Gst.ElementFactory.make("decodebin")
    pipeline.add(source)
    pipeline.add(decoder)
    source.link(decoder)
    streams: list[dict[str, object]] = []

    def on_pad(_: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        kind = "video" if name.startswith("video/") else "audio"
        stream: dict[str, object] = {"kind": kind, "caps": name, "buffers": 0, "seconds": 0.0}
        streams.append(stream)
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("signal-handoffs", True)

        def on_buffer(_: Gst.Element, buffer: Gst.Buffer, __: Gst.Pad) -> None:
            stream["buffers"] = int(stream["buffers"]) + 1  # type: ignore[call-overload]
            if buffer.duration != Gst.CLOCK_TIME_NONE:
                stream["seconds"] = float(stream["seconds"]) + buffer.duration / Gst.SECOND  # type: ignore[arg-type]

        sink.connect("handoff", on_buffer)
        pipeline.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    decoder.connect("pad-added", on_pad)
    loop = GLib.MainLoop()
    errors: list[str] = []

    def on_message(_: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            errors.append(f"{error.message} ({debug})")
            loop.quit()
        elif message.type == Gst.MessageType.EOS:
            loop.quit()

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    pipeline.set_state(Gst.State.PLAYING)
    GLib.timeout_add_seconds(50, loop.quit)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    return streams


if __name__ == "__main__":
    print(json.dumps(play(sys.argv[1])))
