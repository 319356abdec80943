"""Take the README screenshot of a running app (python app.py), with Playwright and Debian chromium.

    python docs/screenshot.py http://127.0.0.1:7860 docs/app.png            # the first preset
    python docs/screenshot.py http://127.0.0.1:7860 docs/app.png --feature bridge --strength 4
    python docs/screenshot.py http://127.0.0.1:7860 docs/app.png --concept ocean --message "How was your day?"

Clicks the first example message, then the first preset (its sliders, Compare on, its message),
or with --feature finds FEATURE, steers with it and sends MESSAGE with compare on, or with
--concept types CONCEPT in "Steer toward a concept" and sends MESSAGE with compare on; then
opens the top fired feature.
"""
from __future__ import annotations

import argparse

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 180_000  # the real model on a CPU: a reply and its comparison take a while


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
    from PIL import Image

    Image.open(args.out).convert("RGB").quantize(colors=128).save(args.out, optimize=True)  # ~4x smaller


if __name__ == "__main__":
    main()
