"""Image paths typed to a vision model are read and taken out of the text, as Ollama's REPL does."""

from __future__ import annotations

import base64
import io

from PIL import Image

from pollama.cli.images import extract_images


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_paths_are_read_and_removed(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    spaced = tmp_path / "my cat.PNG"
    spaced.write_bytes(png_bytes())
    text = f"what is in {tmp_path}/a.png and {str(spaced).replace(' ', chr(92) + ' ')} ?"
    rest, images, notes = extract_images(text)
    assert rest == "what is in  and  ?"
    assert [base64.b64decode(i) for i in images] == [png_bytes(), png_bytes()]
    assert notes == [f"Added image '{tmp_path}/a.png'", f"Added image '{spaced}'"]


def test_missing_files_stay_text_and_fakes_are_refused(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg at all")
    rest, images, notes = extract_images(f"see /nonexistent/x.png and {tmp_path}/fake.jpg")
    assert images == []
    assert rest == "see /nonexistent/x.png and"
    assert notes == [f"couldn't process image '{tmp_path}/fake.jpg': not a JPEG, PNG or WebP image"]


def test_text_without_paths_is_unchanged():
    assert extract_images("a/b.png is relative, c.png has no slash") == ("a/b.png is relative, c.png has no slash", [], [])


def test_run_reads_an_image_path_for_a_vision_model(tmp_path):
    # `pollama run FILE "... /path/x.png"` on a vision model: the image is read, taken out of
    # the prompt and placed first, as the engine itself answers "[img-0]<rest>" with it.
    from cliproc import pollama
    from models.gemma3.test_vision import _config, _png, _tokenizer
    from models.tinyhf import convert, save_tiny, transformers
    from pollama.runner.parallel import ParallelEngine
    from pollama.runner.generation import Done, GenerateOptions

    tok = _tokenizer()
    save_tiny(transformers.Gemma3ForConditionalGeneration, _config(tok), tok, tmp_path / "hf", seed=3)
    gguf = convert(tmp_path / "hf", tmp_path / "vlm.gguf")
    (tmp_path / "cat.png").write_bytes(_png())
    result = pollama("run", str(gguf), f"what is {tmp_path}/cat.png", "--temperature", "0", "--num-predict", "6")
    assert result.returncode == 0, result.stderr
    assert f"Added image '{tmp_path}/cat.png'" in result.stderr
    with ParallelEngine(gguf) as engine:
        items = engine.prompt_items("[img-0]what is", [_png()])
        want = "".join(e.text for e in engine.submit(items, GenerateOptions(num_predict=6)) if not isinstance(e, Done))
    assert result.stdout == want + "\n"
