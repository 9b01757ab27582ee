//! Whole-screen snapshots through TestBackend: main screen at 80×24 and 160×48, help overlay,
//! LoRA browser with an incompatible adapter, schedule editor, parse error, small terminals.
//! Also keeps src/tui/SCREEN.txt (100×30, for the README) in step with the code.

use crate::tui_support::*;
use crossterm::event::{KeyCode, KeyModifiers};
use stipple::tui::app::View;

#[test]
fn main_screen_80x24() {
    let mut app = busy_app();
    insta::assert_snapshot!("main_80x24", render(&mut app, 80, 24));
}

#[test]
fn main_screen_160x48() {
    let mut app = busy_app();
    insta::assert_snapshot!("main_160x48", render(&mut app, 160, 48));
}

#[test]
fn small_terminals_degrade() {
    let mut app = busy_app();
    insta::assert_snapshot!("compact_60x18", render(&mut app, 60, 18));
    let tiny = render(&mut app, 30, 6);
    assert!(tiny.contains("needs at least"), "{tiny}");
}

#[test]
fn help_overlay() {
    let mut app = busy_app();
    press(&mut app, KeyCode::F(1));
    insta::assert_snapshot!("help_100x30", render(&mut app, 100, 30));
}

#[test]
fn f10_shows_the_text_at_each_step_and_esc_closes_it() {
    let mut app = busy_app();
    app.prompt.set_text("a [cat:dog:0.5] in snow", &[]);
    app.settings.steps = 10;
    press(&mut app, KeyCode::F(10));
    let screen = render(&mut app, 100, 30);
    // [cat:dog:0.5] over 10 steps: "cat" until step 5, "dog" from step 6 (A1111's rule).
    assert!(screen.contains("steps 1–5    a cat in snow"), "{screen}");
    assert!(screen.contains("steps 6–10   a dog in snow"), "{screen}");
    press(&mut app, KeyCode::Esc);
    assert!(!render(&mut app, 100, 30).contains("Text at each step"));
}

#[test]
fn lora_browser_marks_incompatible_adapters() {
    let mut app = busy_app();
    press(&mut app, KeyCode::F(2));
    assert_eq!(app.view, View::Loras);
    type_text(&mut app, "xl");
    let screen = render(&mut app, 100, 30);
    assert!(screen.contains("not insertable"), "{screen}");
    insta::assert_snapshot!("lora_browser_incompatible", screen);
    let before = app.prompt.text().to_string();
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        app.prompt.text(),
        before,
        "an incompatible adapter must not be inserted"
    );
    assert!(app.status.as_ref().is_some_and(|s| s.error));
}

#[test]
fn schedule_editor() {
    let mut app = busy_app();
    // Put the cursor inside the tag, then open the editor for it.
    let at = app.prompt.text().find("<lora:").unwrap() + 3;
    app.prompt.buf.set_cursor(at);
    press(&mut app, KeyCode::F(3));
    press(&mut app, KeyCode::Char('a'));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    insta::assert_snapshot!("schedule_editor", render(&mut app, 100, 30));
}

#[test]
fn parse_error_is_shown_at_its_span() {
    let mut app = app();
    type_text(&mut app, "a fox <lora:ink-style:strong=2>");
    let screen = render(&mut app, 80, 24);
    assert!(screen.contains("unknown key `strong`"), "{screen}");
    insta::assert_snapshot!("prompt_error", screen);
}

#[test]
fn error_popup_over_the_queue() {
    let mut app = busy_app();
    app.update(stipple::tui::app::Input::Engine(
        stipple::job::Event::Failed {
            id: 2,
            message: "CUDA out of memory while decoding".into(),
        },
    ));
    let screen = render(&mut app, 80, 24);
    assert!(screen.contains("Job #2 failed"), "{screen}");
    insta::assert_snapshot!("error_popup", screen);
    key(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    assert!(app.overlays.is_empty());
}

#[test]
fn screen_txt_is_current() {
    let mut app = busy_app();
    let screen = render(&mut app, 100, 30);
    let text: String = screen
        .lines()
        .map(|l| {
            // TestBackend's Display quotes each row; the README wants the bare rows.
            let l = l.strip_prefix('"').unwrap_or(l);
            let l = l.strip_suffix('"').unwrap_or(l);
            format!("{}\n", l.trim_end())
        })
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/tui/SCREEN.txt");
    if std::env::var_os("STIPPLE_WRITE_SCREEN").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        on_disk, text,
        "src/tui/SCREEN.txt is stale: rerun with STIPPLE_WRITE_SCREEN=1"
    );
}

/// Column of the first cell of `needle` in `row`, comparing cell symbols.
fn find_in_row(buf: &ratatui::buffer::Buffer, row: u16, needle: &str) -> Option<u16> {
    let syms: Vec<&str> = (0..buf.area.width)
        .map(|x| buf[(x, row)].symbol())
        .collect();
    let n: Vec<String> = needle.chars().map(String::from).collect();
    (0..syms.len().saturating_sub(n.len()))
        .find(|&i| syms[i..i + n.len()].iter().zip(&n).all(|(a, b)| a == b))
        .map(|i| i as u16)
}

#[test]
fn highlighting_colours_tags_weights_break_and_errors() {
    use stipple::tui::event_loop::Screen;
    let mut app = app();
    type_text(
        &mut app,
        "fox <lora:ink-style:0.8> BREAK (red:1.2) <lora:pixel-art:te=x>",
    );
    let mut screen = stipple::tui::terminal::TestScreen::new(160, 40);
    screen.draw(&mut app).unwrap();
    let buf = screen.terminal.backend().buffer().clone();
    let t = &app.theme;
    let at = |needle: &str| {
        buf[(
            find_in_row(&buf, 2, needle).unwrap_or_else(|| panic!("{needle}")),
            2,
        )]
            .clone()
    };
    assert_eq!(at("ink-style").fg, t.get("prompt.lora.name").fg.unwrap());
    assert_eq!(at("0.8").fg, t.get("prompt.lora.value").fg.unwrap());
    assert_eq!(at("BREAK").fg, t.get("prompt.break").fg.unwrap());
    assert_eq!(at(":1.2").fg, t.get("prompt.weight").fg.unwrap());
    assert!(
        at("x>")
            .modifier
            .contains(ratatui::style::Modifier::UNDERLINED),
        "the error span is underlined"
    );
}

/// Every view and overlay at sizes from 1×1 up: below 40×10 the screen says how much room it
/// needs; from there on the header, the view's own pane and the overlay's box are on screen,
/// and no row is wider than the terminal.
#[test]
fn every_view_and_overlay_draws_at_any_size() {
    let sizes = [
        (1, 1),
        (20, 5),
        (40, 10),
        (45, 12),
        (79, 23),
        (80, 24),
        (120, 40),
    ];
    let check = |app: &mut stipple::tui::app::App, what: &str, marker: &str| {
        for (w, h) in sizes {
            let screen = render(app, w, h);
            let rows: Vec<&str> = screen.lines().collect();
            assert_eq!(rows.len(), usize::from(h), "{what} at {w}×{h}");
            for r in &rows {
                // Each row is quoted by TestBackend; wide glyphs fill two cells.
                let cells: usize = r
                    .trim_matches('"')
                    .chars()
                    .map(|c| unicode_width::UnicodeWidthChar::width(c).unwrap_or(0))
                    .sum();
                assert_eq!(cells, usize::from(w), "{what} at {w}×{h}: {r}");
            }
            if (w, h) == (1, 1) {
                assert_eq!(rows[0], "\"s\"", "{what} at 1×1 starts the message");
            } else if w < 40 || h < 10 {
                let words: Vec<&str> = rows
                    .iter()
                    .flat_map(|r| r.trim_matches('"').split_whitespace())
                    .collect();
                assert!(
                    words.join(" ").contains("needs at least 40×10"),
                    "{what} at {w}×{h}:\n{screen}"
                );
            } else {
                // A popup may cover the header in a small terminal.
                assert!(
                    rows[0].contains("stipple") || !app.overlays.is_empty(),
                    "{what} at {w}×{h}:\n{screen}"
                );
                assert!(
                    screen.contains(marker),
                    "{what} at {w}×{h} lacks {marker:?}:\n{screen}"
                );
            }
        }
    };
    let mut app = busy_app();
    app.update(stipple::tui::app::Input::Engine(
        stipple::job::Event::Failed {
            id: 3,
            message: "a\nmulti-line\nmessage".into(),
        },
    ));
    check(&mut app, "error popup", "Job #3 failed");
    press(&mut app, KeyCode::Esc);
    assert!(app.overlays.is_empty());
    let views = [
        (KeyCode::F(2), View::Loras, "LoRAs — filter"),
        (KeyCode::F(3), View::Schedule, "Schedule"),
        (KeyCode::F(4), View::Settings, "Settings"),
        (KeyCode::Esc, View::Generate, "Prompt"),
    ];
    for (k, view, marker) in views {
        press(&mut app, k);
        assert_eq!(app.view, view);
        check(&mut app, &format!("{view:?} view"), marker);
    }
    press(&mut app, KeyCode::F(1));
    check(&mut app, "help", "Keys");
    press(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('p'), KeyModifiers::CONTROL);
    check(&mut app, "palette", " > ");
    press(&mut app, KeyCode::Esc);
    press(&mut app, KeyCode::F(8));
    assert!(app.fullscreen);
    check(&mut app, "full-screen picture", "#1.1 seed 1001");
    press(&mut app, KeyCode::Esc);
    while app.focus != stipple::tui::app::Focus::Gallery {
        press(&mut app, KeyCode::Tab);
    }
    press(&mut app, KeyCode::Char('m'));
    check(&mut app, "mask editor", "Mask #1.1");
}

/// The inner area of the picture pane (the block whose title starts with `caption`) and the
/// bounding box of the half-block cells drawn inside it.
fn picture_in_pane(
    buf: &ratatui::buffer::Buffer,
    caption: &str,
) -> (ratatui::layout::Rect, ratatui::layout::Rect) {
    use ratatui::layout::Rect;
    let (x0, y0) = (0..buf.area.height)
        .find_map(|y| find_in_row(buf, y, &format!("┌ {caption}")).map(|x| (x, y)))
        .unwrap_or_else(|| panic!("no pane titled {caption}"));
    let x1 = (x0 + 1..buf.area.width)
        .find(|&x| buf[(x, y0)].symbol() == "┐")
        .expect("right corner");
    let y1 = (y0 + 1..buf.area.height)
        .find(|&y| buf[(x0, y)].symbol() == "└")
        .expect("bottom corner");
    let inner = Rect::new(x0 + 1, y0 + 1, x1 - x0 - 1, y1 - y0 - 1);
    let drawn: Vec<(u16, u16)> = inner
        .positions()
        .filter(|p| {
            // Half-blocks draw ▀/▄, or a space when both halves have one colour (fg = bg).
            let c = &buf[(p.x, p.y)];
            matches!(c.symbol(), "▀" | "▄")
                || (c.symbol() == " "
                    && c.fg == c.bg
                    && matches!(c.bg, ratatui::style::Color::Rgb(..)))
        })
        .map(|p| (p.x, p.y))
        .collect();
    assert!(!drawn.is_empty(), "no picture in the pane");
    let (xs, ys): (Vec<u16>, Vec<u16>) = drawn.into_iter().unzip();
    let (left, top) = (*xs.iter().min().unwrap(), *ys.iter().min().unwrap());
    let (right, bottom) = (*xs.iter().max().unwrap(), *ys.iter().max().unwrap());
    (
        inner,
        Rect::new(left, top, right - left + 1, bottom - top + 1),
    )
}

/// A picture of `n`×`n` pixels fills its pane at `w`×`h`: one side spans the pane, the other
/// keeps the square's ratio (cells are 10×20 px for half-blocks), and it is centred.
fn assert_fills(app: &mut stipple::tui::app::App, w: u16, h: u16, caption: &str) -> String {
    use stipple::tui::event_loop::Screen;
    let mut screen = stipple::tui::terminal::TestScreen::new(w, h);
    screen.draw(app).unwrap();
    let buf = screen.terminal.backend().buffer().clone();
    let (inner, pic) = picture_in_pane(&buf, caption);
    assert!(
        pic.width == inner.width || pic.height == inner.height,
        "{pic:?} does not fill {inner:?}"
    );
    // Square picture: columns ≈ 2 × rows, within one cell of rounding.
    let (cols, rows) = (i32::from(pic.width), i32::from(pic.height));
    assert!((cols - 2 * rows).abs() <= 2, "ratio lost: {pic:?}");
    let gap_l = pic.x - inner.x;
    let gap_r = inner.right() - pic.right();
    let gap_t = pic.y - inner.y;
    let gap_b = inner.bottom() - pic.bottom();
    assert!(
        gap_l.abs_diff(gap_r) <= 1 && gap_t.abs_diff(gap_b) <= 1,
        "not centred: {pic:?} in {inner:?}"
    );
    format!("{}", screen.terminal.backend())
}

#[test]
fn pictures_fill_their_pane_at_80x24_and_160x48() {
    for n in [64, 512] {
        let mut app = busy_app();
        app.preview
            .show(gradient(n, n, 7), format!("{n}px seed 1001"));
        for (w, h) in [(80, 24), (160, 48)] {
            let screen = assert_fills(&mut app, w, h, &format!("{n}px"));
            insta::assert_snapshot!(format!("picture_{n}px_{w}x{h}"), screen);
        }
    }
}

#[test]
fn a_live_preview_fills_the_pane_too() {
    let mut app = busy_app();
    app.update(stipple::tui::app::Input::Engine(
        stipple::job::Event::Preview {
            id: 2,
            image: 0,
            step: 7,
            preview: gradient(8, 8, 3),
        },
    ));
    assert_fills(&mut app, 160, 48, "#2 step 7");
}

#[test]
fn f8_shows_the_picture_full_screen_and_esc_returns() {
    let mut app = busy_app();
    press(&mut app, KeyCode::F(8));
    assert!(app.fullscreen);
    let screen = assert_fills(&mut app, 160, 48, "#1.1 seed 1001");
    assert!(
        !screen.contains("Queue"),
        "only the picture is shown:\n{screen}"
    );
    assert!(
        screen.contains("back"),
        "the status bar says how to leave:\n{screen}"
    );
    // Typing does not reach the hidden prompt.
    let before = app.prompt.text().to_string();
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(app.prompt.text(), before);
    press(&mut app, KeyCode::Esc);
    assert!(!app.fullscreen);
    assert!(render(&mut app, 160, 48).contains("Queue"));
    // Without a picture there is nothing to show.
    let mut empty = crate::tui_support::app();
    press(&mut empty, KeyCode::F(8));
    assert!(!empty.fullscreen);
    assert!(empty.status.as_ref().is_some_and(|s| s.error));
}
