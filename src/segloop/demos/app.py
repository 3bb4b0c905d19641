"""The chat demo: talk to the agent in the browser and watch every turn (``segloop demo`` serves it).

Upload an image (or pick a bundled sample), type what to segment, and the agent's turns stream in: its
thought, its tool call and the overlay it saw. The final mask is drawn over the image and offered as a
PNG and as COCO RLE JSON (not for a failed or EMPTY answer); every episode is saved as ``segloop run`` saves
it. A follow-up request on the same image continues the same LangGraph thread as a new request: the agent
looks again from the whole image; another image starts afresh (its upload clears the turns, the final mask and
the downloads shown). Stop ends the episode within the current turn. Each browser session keeps its own state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segloop.demos.backends import BackendChoice, Backends
from segloop.demos.bundled import bundled_samples
from segloop.tools.redaction import redact

if TYPE_CHECKING:
    from segloop.policies.assembly import AgentSpec

TITLE = "segloop: segment what a sentence asks for, by acting"
INTRO = (
    "The agent looks at the image, zooms in, prompts the segmenter with boxes and points, inspects "
    "the mask and submits. Each turn below shows its reasoning, the tool call it wrote and the overlay "
    "it was shown. Stop ends the episode within the current turn. A follow-up on the same image is a new request "
    "in the same conversation: the agent looks again from the whole image."
)
OPENAI_LABEL = "OpenAI-compatible server"
CSS = """
#final-overlay img { object-fit: contain; }
#status { min-height: 2.5em; }
/* Tool calls and long observations wrap instead of being clipped. */
#turns pre, #turns code { white-space: pre-wrap !important; overflow-wrap: anywhere; word-break: break-word; }
"""
# Keeps the chat on its newest turn as turns stream in and their images load (which grows it after Gradio's
# own autoscroll ran), unless the person has scrolled up to read: then it stays where they are.
FOLLOW_JS = """
() => {
  const pinned = new WeakMap();
  const scrollers = () => {
    const box = document.querySelector('#turns');
    if (!box) return [];
    return [box, ...box.querySelectorAll('*')].filter(el => el.scrollHeight > el.clientHeight + 4
      && getComputedStyle(el).overflowY.match(/auto|scroll/));
  };
  const follow = () => {
    for (const el of scrollers()) {
      if (!pinned.has(el)) {
        pinned.set(el, true);
        el.addEventListener('scroll', () => {
          pinned.set(el, el.scrollTop + el.clientHeight >= el.scrollHeight - 40);
        });
      }
      if (pinned.get(el)) el.scrollTop = el.scrollHeight;
    }
  };
  new MutationObserver(follow).observe(document.body, {childList: true, subtree: true});
  document.addEventListener('load', follow, true);
}
"""


def command_line_label(spec: AgentSpec) -> str:
    """The page's name for the agent the demo was started with: the bundled one, or what the flags chose."""
    if spec.policy == "compact" and spec.model is None:
        return "offline agent (bundled)"
    return f"the command line's agent ({spec.policy}{': ' + spec.model if spec.model else ''})"


def build_app(backends: Backends, out_dir: Path, work_root: Path | None = None) -> Any:
    """The Gradio Blocks app; ``out_dir`` receives the saved episodes, ``work_root`` the overlays
    streamed to the browser (a temporary folder by default)."""
    import gradio as gr

    from segloop.demos.chat import respond
    from segloop.demos.session import DemoSession

    work_root = Path(work_root or tempfile.mkdtemp(prefix="segloop-demo-"))
    samples = bundled_samples()

    def session_of(state: DemoSession | None) -> DemoSession:
        return state if state is not None else DemoSession.new(work_root)

    async def on_send(state: DemoSession | None, image_path: str | None, query: str, backend: str,
                      url: str | None, model: str | None):
        session = session_of(state)
        choice = BackendChoice(kind="openai" if backend == OPENAI_LABEL else "offline",
                               url=url, model=model)
        async for screen in respond(session, image_path, query, choice, backends, out_dir):
            final = None if screen.clear else screen.final if screen.final is not None else gr.skip()
            files = None if screen.clear else screen.files or gr.skip()
            yield session, screen.chat, screen.status, final, files

    def on_stop(state: DemoSession | None):
        # The running request sees the flag within its current turn, ends the episode and says so itself.
        if state is None or not state.request_stop():
            return gr.skip()
        return "Stopping…"

    def on_new(state: DemoSession | None):
        session = session_of(state)
        session.request_stop()
        session.reset()
        return session, [], "New conversation.", None, None

    def on_image(state: DemoSession | None, image_path: str | None):
        # What is shown belongs to the previous image: a new one starts a new conversation.
        if state is None or not (state.chat or state.thread_id):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        session, chat, _, final, files = on_new(state)
        status = "New image: type a request." if image_path else "Pick a sample or upload an image."
        return session, chat, status, final, files

    def on_backend(backend: str):
        return gr.update(visible=backend == OPENAI_LABEL)

    with gr.Blocks(title="segloop demo", analytics_enabled=False) as app:
        state = gr.State(None)
        gr.Markdown(f"## {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 elem_id="input-image", height=320)
                query = gr.Textbox(label="Request", placeholder="e.g. the only large orange diamond", elem_id="query",
                                   lines=1, max_lines=3)
                with gr.Row():
                    send = gr.Button("Segment", variant="primary", elem_id="send")
                    # Not painted as an alarm: it is there before anything runs.
                    stop = gr.Button("Stop", variant="secondary", elem_id="stop")
                    new = gr.Button("New conversation", elem_id="new")
                if samples:
                    gr.Examples(examples=[[str(path), text] for path, text in samples], inputs=[image, query],
                                label="Samples (synthetic scenes)", elem_id="samples")
                with gr.Accordion("Backend", open=False, elem_id="backend-box"):
                    first = command_line_label(backends.spec)
                    backend = gr.Radio([first, OPENAI_LABEL], value=first, label="Agent",
                                       elem_id="backend")
                    with gr.Group(visible=False) as server_box:
                        server = redact(backends.server_url)
                        url = gr.Textbox(label="Server URL", value=server, placeholder="http://localhost:8000/v1",
                                         elem_id="url", interactive=backends.any_server)
                        model = gr.Textbox(label="Model", placeholder="Qwen/Qwen2.5-VL-7B-Instruct", elem_id="model",
                                           value=backends.spec.model if backends.spec.policy == "openai" else "")
                        gr.Markdown(f"The API key the demo was started with goes only to {server} (its `--base-url`); "
                                    "another URL gets no key." if backends.any_server else
                                    f"This demo talks only to {server} (its `--base-url`).")
                    gr.Markdown(f"Offline policy: `{backends.spec.policy}`; segmenter: "
                                f"`{backends.spec.segmenter}`; at most {backends.spec.episode.max_turns} turns.")
            with gr.Column(scale=3, min_width=400):
                chat = gr.Chatbot(label="Agent turns", elem_id="turns", height=560, buttons=["copy"],
                                  feedback_options=None, group_consecutive_messages=False)
                status = gr.Markdown("Pick a sample or upload an image, then type a request.", elem_id="status")
                with gr.Row():
                    final = gr.Image(label="Final mask", elem_id="final-overlay", interactive=False, height=320,
                                     format="png")
                    files = gr.File(label="Download mask (PNG, COCO RLE JSON)", file_count="multiple",
                                    elem_id="downloads", interactive=False)

        inputs = [state, image, query, backend, url, model]
        outputs = [state, chat, status, final, files]
        run = send.click(on_send, inputs, outputs, concurrency_limit=None)
        submitted = query.submit(on_send, inputs, outputs, concurrency_limit=None)
        # No ``cancels=``: Gradio's cancellation let turns run on and left the page mid-episode; the request
        # ends itself on the flag and shows "Stopped after N turns".
        stop.click(on_stop, [state], [status], concurrency_limit=None, queue=False)
        new.click(on_new, [state], outputs, cancels=[run, submitted])
        image.change(on_image, [state, image], outputs)
        backend.change(on_backend, [backend], [server_box])
    return app
