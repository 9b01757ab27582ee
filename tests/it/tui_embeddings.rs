//! Embeddings in the workstation: the prompt editors complete embedding names as a word is typed
//! (and after ComfyUI's `embedding:`), and an embedding made for another model family is marked
//! in the menu and refused with the reason a prompt using it would get.

use crate::tui_support::*;
use crossterm::event::KeyCode;
use stipple::embedding::listing::{list, Listed};
use stipple::lora::family::ModelWidths;
use stipple::model::Model;
use stipple::tui::app::{App, Input};

fn widths(path: &std::path::Path) -> ModelWidths {
    let model = Model::open(path).unwrap();
    ModelWidths::of(
        model.index.family,
        &stipple::live::strengths::target_params(&model),
    )
}

/// The fixture embeddings: three SD1 ones and an SDXL pair (tests/fixtures/embeddings), and a
/// pickle that is listed but never read (tests/fixtures/embeddings-bad/oldstyle.pt).
fn embeddings() -> Vec<Listed> {
    let fixtures = crate::util::root().join("tests/fixtures");
    let mut all = list(vec![fixtures.join("embeddings")]);
    all.extend(
        list(vec![fixtures.join("embeddings-bad")])
            .into_iter()
            .filter(|l| l.name == "oldstyle"),
    );
    all
}

fn sd1_app() -> App {
    let mut app = app();
    app.start_widths = Some(widths(&crate::util::tiny_model()));
    app.update(Input::Embeddings(embeddings()));
    app
}

fn menu(app: &App) -> Option<Vec<String>> {
    app.prompt.completion.as_ref().map(|c| c.items.clone())
}

fn status(app: &App) -> String {
    app.status
        .as_ref()
        .map(|s| s.text.clone())
        .unwrap_or_default()
}

#[test]
fn typing_a_word_offers_the_embeddings_it_begins() {
    let mut app = sd1_app();
    assert_eq!(app.negative.embeddings, app.prompt.embeddings);
    type_text(&mut app, "a fox, s");
    assert_eq!(menu(&app), None, "one character opens nothing");
    type_text(&mut app, "tipple");
    // Usable ones first; the SDXL pair last, marked.
    assert_eq!(
        menu(&app),
        Some(
            ["stipplemulti", "stippleneg", "stipplestyle", "stipplexl"]
                .map(String::from)
                .to_vec()
        )
    );
    let c = app.prompt.completion.clone().unwrap();
    assert_eq!(c.notes[0], "5 vectors");
    assert_eq!(c.notes[3], "✗ SDXL");
    insta::assert_snapshot!("embedding_completion", render(&mut app, 100, 30));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.prompt.text(), "a fox, stippleneg");
    assert_eq!(menu(&app), None, "a whole name offers nothing more");

    // The SDXL embedding is refused with the reason, and the text stays as typed.
    type_text(&mut app, ", stipplex");
    assert_eq!(menu(&app), Some(vec!["stipplexl".to_string()]));
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.prompt.text(), "a fox, stippleneg, stipplex");
    let s = status(&app);
    assert!(
        s.starts_with("stipplexl cannot be used: an SDXL embedding"),
        "{s}"
    );
    assert!(s.ends_with("the model is SD1.x"), "{s}");
    assert!(app.status.as_ref().is_some_and(|s| s.error));

    // ComfyUI's form completes any name containing what is typed; Esc closes the menu.
    type_text(&mut app, " embedding:multi");
    assert_eq!(menu(&app), Some(vec!["stipplemulti".to_string()]));
    press(&mut app, KeyCode::Esc);
    assert_eq!(menu(&app), None);
    type_text(&mut app, " embedding:old");
    assert_eq!(menu(&app), Some(vec!["oldstyle".to_string()]));
    press(&mut app, KeyCode::Tab);
    let s = status(&app);
    assert!(
        s.starts_with("oldstyle cannot be used: a pickle file"),
        "{s}"
    );
}

/// After an SDXL model is picked, the SDXL pair is the usable one and the SD1 embeddings are
/// marked; a LoRA tag still completes adapters only.
#[test]
fn the_picked_models_family_decides_what_fits() {
    let mut app = sd1_app();
    app.model_widths = Some(widths(&crate::sdxl::tiny_sdxl()));
    app.update(Input::Embeddings(embeddings()));
    type_text(&mut app, "stipple");
    let c = app.prompt.completion.clone().unwrap();
    assert_eq!(c.items[0], "stipplexl");
    assert_eq!(c.notes[0], "2 vectors");
    assert_eq!(c.notes[1], "✗ 32 wide", "{c:?}");
    assert!(c.refusals[1..].iter().all(Option::is_some), "{c:?}");
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.prompt.text(), "stipplexl");
    type_text(&mut app, " <lora:ink");
    assert_eq!(menu(&app), Some(vec!["ink-style".to_string()]));
}
