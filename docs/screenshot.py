"""Take the README screenshot of a running app (python app.py), with Playwright and Debian chromium.

    python docs/screenshot.py http://127.0.0.1:7860 docs/app.png            # the first preset
    python docs/screenshot.py http://127.0.0.1:7860 docs/app.png --feature bridge --strength 4
    python docs/screenshot.py http://127.0.0.1:7860 docs/app.png --concept coffee --message "How was your day?"
    python docs/screenshot.py http://127.0.0.1:7860 docs/fired-panels.png --panels   # 10 ordinary replies

Clicks the first example message, then the first preset (its sliders, Compare on, its message),
or with --feature finds FEATURE, steers with it and sends MESSAGE with compare on, or with
--concept types CONCEPT in "Steer toward a concept" and sends MESSAGE with compare on; then
opens the top fired feature. With --panels, sends each of PANEL_MESSAGES unsteered in a
fresh chat and puts the reply and its fired panel side by side, one row per message.
"""
from __future__ import annotations

import argparse

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 180_000  # the real model on a CPU: a reply and its comparison take a while
# Ordinary messages a person might send (issue 27: the panel should say what a reply is about).
PANEL_MESSAGES = (
    "I had a terrible fight with my brother.",
    "Tell me about your weekend.",
    "What should I cook for dinner tonight?",
    "I just adopted a puppy!",
    "How was the concert last night?",
    "I'm nervous about my exam tomorrow.",
    "What's the weather like today?",
    "I love a cup of coffee in the morning.",
    "My grandmother is in hospital.",
    "We spent our holiday at the beach.",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--feature", help="a name or an id to steer with, instead of the first preset")
    p.add_argument("--strength", default="4")
    p.add_argument("--concept", help="a word to steer toward, instead of the first preset")
    p.add_argument("--message", default="Tell me about your weekend.")
    p.add_argument("--max-new-tokens", default="48")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--panels", action="store_true", help="the fired panel on 10 ordinary replies, one image")
    args = p.parse_args()

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        page.goto(args.url)
        expect(page.locator("#status")).to_contain_text("Loaded:")
        page.locator("#settings").get_by_text("Generation settings").click()
        tokens = page.locator("#max-new-tokens input[type=number]")
        tokens.fill(args.max_new_tokens)
        tokens.press("Enter")
        page.locator("#settings").get_by_text("Generation settings").click()  # closed again: a shorter page
        if args.panels:
            return panels(page, args.out, expect)
        if args.feature:
            page.locator("#feature-search textarea").fill(args.feature)
            page.locator("#feature-search textarea").press("Enter")
            expect(page.locator("#feature-matches input")).not_to_have_value("")
            page.locator("#add-feature").click()
            strength = page.locator("#steer-slider-0 input[type=number]")
            strength.fill(args.strength)
            strength.press("Enter")
            page.locator("#compare input").check()
            page.locator("#message textarea").fill(args.message)
            page.locator("#message textarea").press("Enter")
        elif args.concept:
            page.locator("#concept textarea").fill(args.concept)
            page.locator("#concept textarea").press("Enter")
            expect(page.locator("#concept-note")).to_contain_text(args.concept)
            page.locator("#compare input").check()
            page.locator("#message textarea").fill(args.message)
            page.locator("#message textarea").press("Enter")
        else:
            page.locator("#example-0").click()
            expect(page.locator("#chat .bot").first).to_be_visible()
            page.wait_for_function("() => !document.querySelector('.generating')", timeout=WAIT_MS)
            page.locator("#preset-0").click()
            expect(page.locator("#compare input")).to_be_checked()
        expect(page.locator("#fired button").first).to_be_visible()
        expect(page.locator("#reply-unsteered textarea")).not_to_have_value("")
        # The unsteered reply streams after the steered one; Gradio marks outputs still streaming.
        page.wait_for_function("() => !document.querySelector('.generating')", timeout=WAIT_MS)
        page.locator("#fired button").first.click()
        expect(page.locator("#feature-highlight")).to_be_visible()
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    _shrink(args.out)


def panels(page, out: str, expect) -> None:
    """Each message in a fresh chat; the chat and the fired panel cropped side by side, stacked.
    Prints each reply and its panel's top 5 rows, for the table in docs/dictionary-card.md."""
    import io

    from PIL import Image

    rows = []
    for message in PANEL_MESSAGES:
        page.locator("#clear").click()
        page.wait_for_timeout(1500)  # the clear's own update empties the message box: let it land first
        page.locator("#message textarea").fill(message)
        page.locator("#message textarea").press("Enter")
        expect(page.locator("#chat .bot").first).to_be_visible()
        page.wait_for_function("() => !document.querySelector('.generating')", timeout=WAIT_MS)
        expect(page.locator("#fired button").first).to_be_visible()
        page.wait_for_timeout(500)
        top = [" ".join(t.split()) for t in page.locator("#fired button").all_inner_texts()[:5]]
        print(f"{message} -> {' '.join(page.locator('#chat .bot').last.inner_text().split())!r}: " + " · ".join(top))
        shots = [Image.open(io.BytesIO(page.locator(sel).screenshot())) for sel in ("#chat", "#fired")]
        row = Image.new("RGB", (sum(s.width for s in shots), max(s.height for s in shots)), "white")
        row.paste(shots[0], (0, 0))
        row.paste(shots[1], (shots[0].width, 0))
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    sheet.save(out)
    _shrink(out)


def _shrink(path: str) -> None:
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)  # ~4x smaller


if __name__ == "__main__":
    main()
