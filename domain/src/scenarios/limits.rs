//! Meta's limits on what a scenario item becomes: reply buttons, list rows,
//! bodies and captions. The flow file is checked against these at import,
//! so a flow that passes never fails at Meta.

use super::flow::ItemType;

/// Reply buttons per message.
pub const REPLY_BUTTONS: usize = 3;
/// A reply button's title.
pub const BUTTON_TITLE: usize = 20;
/// Rows of a list message, over all its sections.
pub const LIST_ROWS: usize = 10;
/// A list row's title.
pub const LIST_ROW_TITLE: usize = 24;
/// The body of an interactive message.
pub const INTERACTIVE_BODY: usize = 1024;
/// A text message.
pub const TEXT_BODY: usize = 4096;
/// A media caption.
pub const CAPTION: usize = 1024;

/// Whether an item with `options` children goes out as reply buttons (a
/// button item with 3 options or fewer) rather than a list.
pub fn as_buttons(kind: ItemType, options: usize) -> bool {
    kind == ItemType::Button && options <= REPLY_BUTTONS
}

/// The longest title an option may have under an item of `kind` with
/// `options` children.
pub fn option_title_max(kind: ItemType, options: usize) -> usize {
    if as_buttons(kind, options) {
        BUTTON_TITLE
    } else {
        LIST_ROW_TITLE
    }
}

/// Where the option's title is shown, for error messages.
pub fn option_place(kind: ItemType, options: usize) -> &'static str {
    if as_buttons(kind, options) {
        "reply button"
    } else {
        "list row"
    }
}
