"""Voilà settings for the explorer apps (`make apps`, tests/browser/test_apps_browser.py).

Voilà reads this file because the Makefile starts it with --Voila.config_file_paths pointing
here. Each app is one small notebook in this folder; Voilà runs it in a fresh kernel per page
and shows its outputs, never its code.
"""
# `c` is the traitlets config object that Voilà passes to this file.
c = get_config()  # noqa: F821

# Local use: a teacher's laptop (projected) or a student's own machine. Loopback only, no token
# (students open http://localhost:8866/voila/render/anchors.ipynb), no browser opened by Voilà.
c.Voila.ip = "127.0.0.1"
c.Voila.port = 8866                     # `make apps APPS_PORT=...` passes --port to change it
c.Voila.open_browser = False
c.VoilaConfiguration.strip_sources = True     # the default, pinned: the apps show no code
c.VoilaConfiguration.show_tracebacks = True   # an error in an explorer says what went wrong


# (a) Shut a page's kernel down when the page closes.
#
# On `beforeunload` Voilà's page sends POST /voila/api/shutdown/<kernel id> with a form field
# `_xsrf` copied from the `_xsrf` cookie. jupyter_server checks that field against the cookie
# for every POST (tornado's XSRF protection). But Voilà 0.5's page handler never creates that
# cookie: only pages rendered through jupyter_server's own templates do (Voilà's tree page
# does, so apps opened from the tree page worked). An app URL opened directly therefore sent
# an empty `_xsrf`, was refused with "403 '_xsrf' argument missing from POST", and its kernel
# (about 0.8 GB with torch) lived on until Voilà stopped.
#
# The fix keeps the XSRF check: before the kernel starts (hence before the first byte of the
# page is sent), this hook asks the request handler for its XSRF token, which makes tornado
# add the `_xsrf` cookie to the page's response. The page's shutdown POST then carries a
# valid token. (Turning the check off with disable_check_xsrf would also stop the 403s, but
# would let any web page the browser visits post to this server.)
def set_xsrf_cookie(request_handler, notebook, cwd):
    """Voilà prelaunch hook: set the `_xsrf` cookie on the page's response; keep the notebook."""
    _ = request_handler.xsrf_token      # reading the property sets the cookie (tornado)
    return None                         # None: Voilà runs the notebook as it is


c.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie


# (b) Cull idle kernels, so that kernels whose page never said goodbye (a crashed browser, a
# laptop put to sleep, a tab left open after the lecture) cannot pile up: each holds ~0.8 GB.
# A kernel with no message for 30 minutes is shut down, also while its page is still open
# (cull_connected); moving a slider is activity, so only a page left alone that long needs a
# reload. Kernels still executing are never culled (cull_busy stays False).
c.MappingKernelManager.cull_idle_timeout = 30 * 60
c.MappingKernelManager.cull_interval = 60
c.MappingKernelManager.cull_connected = True


# (c) No page that waits forever. A page is streamed while its cells run; "Executing 1 of 2"
# stays on screen until the explorer's cell has returned. Pages used to hang there now and
# then: the explorers wrote their picture into an ipywidgets.Output *during* the cell, and
# Voilà's executor (an nbclient NotebookClient) answers such captured output with comm
# messages on the shell channel while it waits there for the cell's execute_reply, and at
# times misses that reply (jupyter/nbclient#312). The explorers now set the Output's state
# instead (frcnn_edu/widgets/_base.py, _Explorer.redraw), so no comm traffic races the reply.
# Voilà waits for a reply without limit by default; this turns any future stall into an error
# message on the page after 5 minutes (a cell of the apps takes seconds: torch's import, one
# drawing) instead of a spinner for ever.
c.VoilaExecutor.timeout = 300
