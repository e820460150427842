"""The `--show` window's own link to the X display, beside Qt's, through libxcb (which cv2 itself links, so it is
present wherever cv2 imports) and ctypes.

Qt needs three things from outside in this daemon, each found by measurement:
- whether it can connect at all: asked first, because Qt aborts the process (a core dump) when it cannot;
- whether the server has gone: Qt calls exit(1) from inside a GUI call on a broken connection (or aborts, if other
  threads run), so its window lives in a process of its own; when that process ends, the daemon's link tells a
  display that went away (a clean stop) from a window that failed alone (runtime/window.py);
- whether its window really shows what it drew: Qt 5.15 now and then loses the events of a new window's mapping
  (1 start in 4 or 5 under Xvfb), and the window stays black for good; unmapped and mapped again, it paints.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

from runtime.errors import UserError, printable

PROBE_TIMEOUT_S = 3.0  # an X server behind a dead TCP route would otherwise hold the start for minutes
_ERRORS = {5: "not a valid display name", 6: "the display has no such screen"}  # xcb_connect's (xcb.h)
_WM_NAME, _STRING, _CARDINAL, _ZPIXMAP = 39, 31, 6, 2  # predefined atoms and the image format (xproto.h)
_SEARCH_DEPTH = 3  # root -> a window manager's frame (and its parent) -> the client window


class _Cookie(ctypes.Structure):
    _fields_ = [("sequence", ctypes.c_uint)]


class _ScreenIterator(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_uint32)), ("rem", ctypes.c_int), ("index", ctypes.c_int)]


def _load() -> ctypes.CDLL:
    xcb = ctypes.CDLL("libxcb.so.1")
    p, u8, u16, u32, i16 = ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int16
    signatures = {
        "xcb_connect": (p, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]),
        "xcb_connection_has_error": (ctypes.c_int, [p]),
        "xcb_disconnect": (None, [p]),
        "xcb_flush": (ctypes.c_int, [p]),
        "xcb_poll_for_event": (p, [p]),
        "xcb_get_setup": (p, [p]),
        "xcb_setup_roots_iterator": (_ScreenIterator, [p]),
        "xcb_screen_next": (None, [ctypes.POINTER(_ScreenIterator)]),
        "xcb_intern_atom": (_Cookie, [p, u8, u16, ctypes.c_char_p]),
        "xcb_intern_atom_reply": (ctypes.POINTER(u32), [p, _Cookie, p]),
        "xcb_query_tree": (_Cookie, [p, u32]),
        "xcb_query_tree_reply": (p, [p, _Cookie, p]),
        "xcb_query_tree_children": (ctypes.POINTER(u32), [p]),
        "xcb_query_tree_children_length": (ctypes.c_int, [p]),
        "xcb_get_property": (_Cookie, [p, u8, u32, u32, u32, u32, u32]),
        "xcb_get_property_reply": (p, [p, _Cookie, p]),
        "xcb_get_property_value": (p, [p]),
        "xcb_get_property_value_length": (ctypes.c_int, [p]),
        "xcb_get_image": (_Cookie, [p, u8, u32, i16, i16, u16, u16, u32]),
        "xcb_get_image_reply": (ctypes.POINTER(u8), [p, _Cookie, p]),
        "xcb_get_image_data": (ctypes.POINTER(u8), [p]),
        "xcb_get_image_data_length": (ctypes.c_int, [p]),
        "xcb_map_window": (_Cookie, [p, u32]),
        "xcb_unmap_window": (_Cookie, [p, u32]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(xcb, name)
        function.restype, function.argtypes = restype, argtypes
    return xcb


_free = ctypes.CDLL(None).free
_free.argtypes = [ctypes.c_void_p]


class XLink:
    """XLink(display): connected, or UserError (one line) if the display does not answer within PROBE_TIMEOUT_S
    (connected on a thread we stop waiting for, with the same libxcb, name parsing and authorization as Qt)."""

    def __init__(self, display: str) -> None:
        self._xcb = xcb = _load()
        self._connection: int | None = None
        screen = ctypes.c_int(0)
        made: list[int] = []
        probe = threading.Thread(
            target=lambda: made.append(xcb.xcb_connect(display.encode("utf-8", "surrogateescape"), screen)),
            name="x-probe",
            daemon=True,
        )
        probe.start()
        probe.join(PROBE_TIMEOUT_S)
        if not made:
            raise UserError(
                f"--show: cannot use the X display {printable(display)!r}: no answer within {PROBE_TIMEOUT_S:.0f} s"
            )
        error = xcb.xcb_connection_has_error(made[0])
        if error:
            xcb.xcb_disconnect(made[0])
            problem = _ERRORS.get(error, "no X server answers there, or it refused the connection")
            raise UserError(f"--show: cannot use the X display {printable(display)!r}: {problem}")
        self._connection = made[0]
        roots = xcb.xcb_setup_roots_iterator(xcb.xcb_get_setup(self._connection))
        for _ in range(screen.value):
            xcb.xcb_screen_next(ctypes.byref(roots))
        self._root = roots.data[0]  # xcb_screen_t begins with its root window
        self._net_wm_name = self._atom(b"_NET_WM_NAME")
        self._net_wm_pid = self._atom(b"_NET_WM_PID")
        self._utf8_string = self._atom(b"UTF8_STRING")

    def lost(self) -> bool:
        """True once the server has gone: reading what it sent finds the end of the stream."""
        while event := self._xcb.xcb_poll_for_event(self._connection):
            self._free_reply(event)  # what every client gets (MappingNotify), or errors of our requests
        return bool(self._xcb.xcb_connection_has_error(self._connection))

    def find_window(self, title: str) -> int | None:
        """This process's window named `title` (under a window manager's frame, if any), or None."""
        level = [self._root]
        for _ in range(_SEARCH_DEPTH):
            below = []
            for window in level:
                for child in self._children(window):
                    if self._pid(child) == os.getpid() and self._name(child) == title:
                        return child
                    below.append(child)
            level = below
        return None

    def shows(self, window: int, x: int, y: int, gray: int) -> bool:
        """Whether the window's pixel (x, y) is the gray level `gray` on screen (so no byte order matters)."""
        reply = self._xcb.xcb_get_image_reply(
            self._connection, self._xcb.xcb_get_image(self._connection, _ZPIXMAP, window, x, y, 1, 1, 0xFFFFFFFF), None
        )
        if not reply:  # the window is gone or not viewable
            return False
        try:
            depth = reply[1]
            data = self._xcb.xcb_get_image_data(reply)
            length = self._xcb.xcb_get_image_data_length(reply)
            if depth not in (24, 32):
                return True  # a 16-bit display holds no exact gray of ours: do not judge it
            return length >= 3 and all(data[i] == gray for i in range(3))
        finally:
            self._free_reply(reply)

    def remap(self, window: int) -> None:
        """Unmap and map the window: its owner gets the events of a mapping again, and the server an Expose."""
        self._xcb.xcb_unmap_window(self._connection, window)
        self._xcb.xcb_map_window(self._connection, window)
        self._xcb.xcb_flush(self._connection)

    def close(self) -> None:
        if self._connection:
            self._xcb.xcb_disconnect(self._connection)
            self._connection = None

    # -- the requests behind them ---------------------------------------------------------------------------

    @staticmethod
    def _free_reply(reply) -> None:
        _free(ctypes.cast(reply, ctypes.c_void_p))

    def _atom(self, name: bytes) -> int:
        reply = self._xcb.xcb_intern_atom_reply(
            self._connection, self._xcb.xcb_intern_atom(self._connection, 0, len(name), name), None
        )
        if not reply:
            return 0
        try:
            return reply[2]  # response_type, pad, sequence (one 32-bit word), length, then the atom
        finally:
            self._free_reply(reply)

    def _children(self, window: int) -> list[int]:
        reply = self._xcb.xcb_query_tree_reply(
            self._connection, self._xcb.xcb_query_tree(self._connection, window), None
        )
        if not reply:
            return []
        try:
            children = self._xcb.xcb_query_tree_children(reply)
            return [children[i] for i in range(self._xcb.xcb_query_tree_children_length(reply))]
        finally:
            self._free_reply(reply)

    def _property(self, window: int, name: int, kind: int) -> bytes:
        cookie = self._xcb.xcb_get_property(self._connection, 0, window, name, kind, 0, 1024)
        reply = self._xcb.xcb_get_property_reply(self._connection, cookie, None)
        if not reply:
            return b""
        try:
            return ctypes.string_at(
                self._xcb.xcb_get_property_value(reply), self._xcb.xcb_get_property_value_length(reply)
            )
        finally:
            self._free_reply(reply)

    def _pid(self, window: int) -> int | None:
        value = self._property(window, self._net_wm_pid, _CARDINAL)
        return int.from_bytes(value[:4], sys.byteorder) if len(value) >= 4 else None  # in our byte order

    def _name(self, window: int) -> str:
        utf8 = self._property(window, self._net_wm_name, self._utf8_string)
        return (utf8 or self._property(window, _WM_NAME, _STRING)).decode("utf-8", "replace")
