//! The flow file (`wapipe scenarios import|export`, and the REST API's
//! scenario bodies): a config's scenarios, their items as a graph of refs,
//! the template scenarios product lists send, and the chatbot settings.
//! Parsing refuses unknown fields; [`FlowFile::validate`] refuses a graph
//! or a text Meta would not take. Every fault names its JSON path, e.g.
//! `scenarios[0].items[2].children[1]`.

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limits;

/// A whole flow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlowFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<FlowSettings>,
    #[serde(default)]
    pub scenarios: Vec<FlowScenario>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_scenarios: Vec<FlowTemplate>,
}

/// A config's chatbot settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlowSettings {
    /// Sent, with the options again, when an answer is neither an option
    /// nor a keyword. None: only the options are sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Words that end a waiting run; default `["stop", "menu"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_keywords: Option<Vec<String>>,
    /// The title of the scenario that "menu" starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_scenario: Option<String>,
    /// The label of the button that opens a list; default "Menu".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_button: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioType {
    /// Belongs to the config it is imported into.
    #[default]
    Client,
    /// Serves every config.
    Generic,
}

impl ScenarioType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioType::Client => "client",
            ScenarioType::Generic => "generic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(ScenarioType::Client),
            "generic" => Some(ScenarioType::Generic),
            _ => None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowScenario {
    pub title: String,
    #[serde(rename = "type", default)]
    pub kind: ScenarioType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
    /// Runs one customer may have; 0: unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeat_count: i32,
    /// Higher first among the config's (then the generic) scenarios.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(default)]
    pub items: Vec<FlowItem>,
}

/// One step. Its `type` stays a string here so that an unknown type is
/// refused by [`FlowFile::validate`] with its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowItem {
    /// The item's name within its scenario: what `children` refer to.
    #[serde(rename = "ref")]
    pub r#ref: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The text, caption or body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Media items: a public http(s) link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Shown on the parent's reply button or list row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// product_list items: refs of `template_scenarios`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template_scenarios: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTemplate {
    #[serde(rename = "ref")]
    pub r#ref: String,
    /// Meta's product retailer id of the thumbnail product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_id: Option<String>,
    /// The catalog the products are in (Meta's product-list message needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_id: Option<String>,
    /// The product-list header; default: the item's title, else "Catalogue".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    pub sections: Vec<FlowSection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSection {
    pub title: String,
    pub product_items: Vec<String>,
}

/// What an item sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemType {
    Text,
    Image,
    Video,
    Audio,
    Document,
    Button,
    List,
    ProductList,
    Handoff,
}

impl ItemType {
    pub const ALL: [ItemType; 9] = [
        ItemType::Text,
        ItemType::Image,
        ItemType::Video,
        ItemType::Audio,
        ItemType::Document,
        ItemType::Button,
        ItemType::List,
        ItemType::ProductList,
        ItemType::Handoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Text => "text",
            ItemType::Image => "image",
            ItemType::Video => "video",
            ItemType::Audio => "audio",
            ItemType::Document => "document",
            ItemType::Button => "button",
            ItemType::List => "list",
            ItemType::ProductList => "product_list",
            ItemType::Handoff => "handoff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_media(self) -> bool {
        matches!(
            self,
            ItemType::Image | ItemType::Video | ItemType::Audio | ItemType::Document
        )
    }

    /// Button and list items offer their children as options.
    pub fn offers_options(self) -> bool {
        matches!(self, ItemType::Button | ItemType::List)
    }
}

/// One fault of a flow file, at its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FlowFault {
    pub path: String,
    pub kind: FaultKind,
    pub message: String,
}

/// The kinds of fault, for callers (and tests) that branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Not JSON, a wrong type, a missing or unknown field.
    Syntax,
    DanglingRef,
    Cycle,
    UnknownType,
    TooLong,
    TooManyOptions,
    Duplicate,
    Missing,
    Invalid,
}

impl FlowFault {
    fn new(path: impl Into<String>, kind: FaultKind, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }
}

/// Every fault of a file, in file order; shown one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
pub struct FlowErrors(pub Vec<FlowFault>);

fn field<T: DeserializeOwned>(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<T>, FlowFault> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| FlowFault::new(format!("{path}.{key}"), FaultKind::Syntax, e.to_string())),
    }
}

/// Deserialises `v` as `T`, naming `path` in the error. Objects are taken
/// apart one level so that a fault inside a list names its index.
fn piece<T: DeserializeOwned>(v: &Value, path: &str) -> Result<T, FlowFault> {
    serde_json::from_value(v.clone())
        .map_err(|e| FlowFault::new(path, FaultKind::Syntax, e.to_string()))
}

fn list<T: DeserializeOwned>(
    v: Option<&Value>,
    path: &str,
    each: impl Fn(&Value, &str) -> Result<T, FlowFault>,
) -> Result<Vec<T>, FlowFault> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| each(x, &format!("{path}[{i}]")))
            .collect(),
        Some(_) => Err(FlowFault::new(path, FaultKind::Syntax, "expected an array")),
    }
}

fn object<'v>(
    v: &'v Value,
    path: &str,
    known: &[&str],
) -> Result<&'v serde_json::Map<String, Value>, FlowFault> {
    let Value::Object(o) = v else {
        return Err(FlowFault::new(
            path,
            FaultKind::Syntax,
            "expected an object",
        ));
    };
    for k in o.keys() {
        if !known.contains(&k.as_str()) {
            return Err(FlowFault::new(
                format!("{path}.{k}"),
                FaultKind::Syntax,
                format!("unknown field; expected one of {}", known.join(", ")),
            ));
        }
    }
    Ok(o)
}

fn scenario_at(v: &Value, path: &str) -> Result<FlowScenario, FlowFault> {
    let o = object(
        v,
        path,
        &[
            "title",
            "type",
            "description",
            "keywords",
            "active",
            "repeat_count",
            "priority",
            "items",
        ],
    )?;
    // Items one by one (for their paths), the rest in one go.
    let items = list(o.get("items"), &format!("{path}.items"), |x, p| {
        object(
            x,
            p,
            &[
                "ref",
                "type",
                "label",
                "url",
                "title",
                "children",
                "template_scenarios",
            ],
        )?;
        piece::<FlowItem>(x, p)
    })?;
    let mut rest = o.clone();
    rest.remove("items");
    if let Some(t) = field::<String>(o, "type", path)?
        && ScenarioType::parse(&t).is_none()
    {
        return Err(FlowFault::new(
            format!("{path}.type"),
            FaultKind::UnknownType,
            format!("unknown scenario type {t:?}; expected client or generic"),
        ));
    }
    let mut s: FlowScenario = piece(&Value::Object(rest), path)?;
    s.items = items;
    Ok(s)
}

impl FlowFile {
    /// Parses a flow file; the first syntax fault (not JSON, a wrong
    /// type, a missing or unknown field) with its path.
    pub fn parse(text: &str) -> Result<Self, FlowFault> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| FlowFault::new("$", FaultKind::Syntax, format!("not JSON: {e}")))?;
        Self::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<Self, FlowFault> {
        let o = object(v, "$", &["settings", "scenarios", "template_scenarios"])?;
        let settings = match o.get("settings") {
            None | Some(Value::Null) => None,
            Some(s) => {
                object(
                    s,
                    "settings",
                    &[
                        "fallback",
                        "exit_keywords",
                        "default_scenario",
                        "list_button",
                    ],
                )?;
                Some(piece::<FlowSettings>(s, "settings")?)
            }
        };
        let scenarios = list(o.get("scenarios"), "scenarios", scenario_at)?;
        let template_scenarios =
            list(o.get("template_scenarios"), "template_scenarios", |x, p| {
                let t = object(
                    x,
                    p,
                    &[
                        "ref",
                        "thumbnail_id",
                        "catalog_id",
                        "header",
                        "footer",
                        "sections",
                    ],
                )?;
                list(t.get("sections"), &format!("{p}.sections"), |s, sp| {
                    object(s, sp, &["title", "product_items"])?;
                    piece::<FlowSection>(s, sp)
                })?;
                piece::<FlowTemplate>(x, p)
            })?;
        Ok(FlowFile {
            settings,
            scenarios,
            template_scenarios,
        })
    }

    /// Every fault Meta or the engine would trip on, with its path. Empty:
    /// the file can be imported as it is.
    pub fn validate(&self) -> Result<(), FlowErrors> {
        let mut faults = Vec::new();
        self.check(&mut faults);
        if faults.is_empty() {
            Ok(())
        } else {
            Err(FlowErrors(faults))
        }
    }

    fn check(&self, f: &mut Vec<FlowFault>) {
        let templates: HashMap<&str, usize> = self
            .template_scenarios
            .iter()
            .enumerate()
            .map(|(i, t)| (t.r#ref.as_str(), i))
            .collect();
        let mut seen_refs = HashSet::new();
        for (i, t) in self.template_scenarios.iter().enumerate() {
            let p = format!("template_scenarios[{i}]");
            check_ref(f, &format!("{p}.ref"), &t.r#ref);
            if !seen_refs.insert(t.r#ref.as_str()) {
                f.push(FlowFault::new(
                    format!("{p}.ref"),
                    FaultKind::Duplicate,
                    format!("ref {:?} is used twice", t.r#ref),
                ));
            }
            max_len(f, &format!("{p}.header"), t.header.as_deref(), 60);
            max_len(f, &format!("{p}.footer"), t.footer.as_deref(), 60);
            if t.sections.is_empty() || t.sections.len() > 10 {
                f.push(FlowFault::new(
                    format!("{p}.sections"),
                    FaultKind::TooManyOptions,
                    format!("{} sections; Meta allows 1 to 10", t.sections.len()),
                ));
            }
            let products: usize = t.sections.iter().map(|s| s.product_items.len()).sum();
            if products == 0 || products > 30 {
                f.push(FlowFault::new(
                    format!("{p}.sections"),
                    FaultKind::TooManyOptions,
                    format!("{products} products; Meta allows 1 to 30"),
                ));
            }
            for (j, s) in t.sections.iter().enumerate() {
                let sp = format!("{p}.sections[{j}]");
                non_empty(f, &format!("{sp}.title"), &s.title);
                max_len(
                    f,
                    &format!("{sp}.title"),
                    Some(&s.title),
                    limits::LIST_ROW_TITLE,
                );
                for (k, id) in s.product_items.iter().enumerate() {
                    non_empty(f, &format!("{sp}.product_items[{k}]"), id);
                }
            }
        }

        let mut titles = HashSet::new();
        for (i, s) in self.scenarios.iter().enumerate() {
            let p = format!("scenarios[{i}]");
            non_empty(f, &format!("{p}.title"), &s.title);
            max_len(f, &format!("{p}.title"), Some(&s.title), 200);
            if !titles.insert((s.kind, s.title.as_str())) {
                f.push(FlowFault::new(
                    format!("{p}.title"),
                    FaultKind::Duplicate,
                    format!("title {:?} is used twice", s.title),
                ));
            }
            if s.repeat_count < 0 {
                f.push(FlowFault::new(
                    format!("{p}.repeat_count"),
                    FaultKind::Invalid,
                    "must be 0 (unlimited) or more",
                ));
            }
            for (k, kw) in s.keywords.iter().enumerate() {
                if super::keywords::words(kw).is_empty() {
                    f.push(FlowFault::new(
                        format!("{p}.keywords[{k}]"),
                        FaultKind::Invalid,
                        format!("keyword {kw:?} has no letter or digit"),
                    ));
                }
            }
            check_items(f, &p, s, &templates);
        }

        if let Some(st) = &self.settings {
            // A default scenario may be stored from an earlier import: the
            // importer checks it against the database.
            max_len(
                f,
                "settings.fallback",
                st.fallback.as_deref(),
                limits::TEXT_BODY,
            );
            max_len(
                f,
                "settings.list_button",
                st.list_button.as_deref(),
                limits::BUTTON_TITLE,
            );
            if let Some(b) = &st.list_button {
                non_empty(f, "settings.list_button", b);
            }
            for (k, kw) in st.exit_keywords.iter().flatten().enumerate() {
                if super::keywords::words(kw).is_empty() {
                    f.push(FlowFault::new(
                        format!("settings.exit_keywords[{k}]"),
                        FaultKind::Invalid,
                        format!("keyword {kw:?} has no letter or digit"),
                    ));
                }
            }
        }
    }
}

fn non_empty(f: &mut Vec<FlowFault>, path: &str, v: &str) {
    if v.trim().is_empty() {
        f.push(FlowFault::new(
            path,
            FaultKind::Missing,
            "must not be empty",
        ));
    }
}

fn max_len(f: &mut Vec<FlowFault>, path: &str, v: Option<&str>, max: usize) {
    if let Some(v) = v {
        let n = v.chars().count();
        if n > max {
            f.push(FlowFault::new(
                path,
                FaultKind::TooLong,
                format!("{n} characters; Meta allows at most {max}"),
            ));
        }
    }
}

/// Refs end up in reply ids and in exports: short and printable.
fn check_ref(f: &mut Vec<FlowFault>, path: &str, r: &str) {
    if r.trim().is_empty() {
        f.push(FlowFault::new(
            path,
            FaultKind::Missing,
            "must not be empty",
        ));
    } else if r.chars().count() > 64 || r.chars().any(char::is_control) {
        f.push(FlowFault::new(
            path,
            FaultKind::Invalid,
            "a ref is at most 64 printable characters",
        ));
    }
}

fn check_items(
    f: &mut Vec<FlowFault>,
    p: &str,
    s: &FlowScenario,
    templates: &HashMap<&str, usize>,
) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (j, it) in s.items.iter().enumerate() {
        let ip = format!("{p}.items[{j}]");
        check_ref(f, &format!("{ip}.ref"), &it.r#ref);
        if index.insert(it.r#ref.as_str(), j).is_some() {
            f.push(FlowFault::new(
                format!("{ip}.ref"),
                FaultKind::Duplicate,
                format!("ref {:?} is used twice in this scenario", it.r#ref),
            ));
        }
    }
    if s.items.is_empty() {
        f.push(FlowFault::new(
            format!("{p}.items"),
            FaultKind::Missing,
            "a scenario needs at least one item",
        ));
    }

    // Who points at whom, for the titles' limits and the cycle check.
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); s.items.len()];
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); s.items.len()];
    for (j, it) in s.items.iter().enumerate() {
        let ip = format!("{p}.items[{j}]");
        let kind = ItemType::parse(&it.kind);
        if kind.is_none() {
            f.push(FlowFault::new(
                format!("{ip}.type"),
                FaultKind::UnknownType,
                format!(
                    "unknown item type {:?}; expected one of {}",
                    it.kind,
                    ItemType::ALL.map(ItemType::as_str).join(", ")
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (c, child) in it.children.iter().enumerate() {
            match index.get(child.as_str()) {
                Some(&k) => {
                    if seen.insert(k) {
                        edges[j].push(k);
                        parents[k].push(j);
                    } else {
                        f.push(FlowFault::new(
                            format!("{ip}.children[{c}]"),
                            FaultKind::Duplicate,
                            format!("child {child:?} is listed twice"),
                        ));
                    }
                }
                None => f.push(FlowFault::new(
                    format!("{ip}.children[{c}]"),
                    FaultKind::DanglingRef,
                    format!("no item with ref {child:?} in this scenario"),
                )),
            }
        }
        for (c, t) in it.template_scenarios.iter().enumerate() {
            if !templates.contains_key(t.as_str()) {
                f.push(FlowFault::new(
                    format!("{ip}.template_scenarios[{c}]"),
                    FaultKind::DanglingRef,
                    format!("no template scenario with ref {t:?}"),
                ));
            }
        }
        let label = it.label.as_deref().unwrap_or("");
        match kind {
            Some(ItemType::Text) | Some(ItemType::Handoff) => {
                non_empty(f, &format!("{ip}.label"), label);
                max_len(
                    f,
                    &format!("{ip}.label"),
                    it.label.as_deref(),
                    limits::TEXT_BODY,
                );
            }
            Some(k) if k.is_media() => {
                match it.url.as_deref() {
                    Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
                    Some(u) => f.push(FlowFault::new(
                        format!("{ip}.url"),
                        FaultKind::Invalid,
                        format!("{u:?} is not an http(s) link"),
                    )),
                    None => f.push(FlowFault::new(
                        format!("{ip}.url"),
                        FaultKind::Missing,
                        format!("a {} item needs a url", k.as_str()),
                    )),
                }
                if k == ItemType::Audio && it.label.is_some() {
                    f.push(FlowFault::new(
                        format!("{ip}.label"),
                        FaultKind::Invalid,
                        "audio messages take no caption",
                    ));
                }
                max_len(
                    f,
                    &format!("{ip}.label"),
                    it.label.as_deref(),
                    limits::CAPTION,
                );
            }
            Some(k) if k.offers_options() => {
                non_empty(f, &format!("{ip}.label"), label);
                max_len(
                    f,
                    &format!("{ip}.label"),
                    it.label.as_deref(),
                    limits::INTERACTIVE_BODY,
                );
                let n = it.children.len();
                if n == 0 || n > limits::LIST_ROWS {
                    f.push(FlowFault::new(
                        format!("{ip}.children"),
                        FaultKind::TooManyOptions,
                        format!(
                            "{n} options; a {} item offers 1 to {}",
                            k.as_str(),
                            limits::LIST_ROWS
                        ),
                    ));
                }
            }
            Some(ItemType::ProductList) => {
                non_empty(f, &format!("{ip}.label"), label);
                max_len(
                    f,
                    &format!("{ip}.label"),
                    it.label.as_deref(),
                    limits::INTERACTIVE_BODY,
                );
                if it.template_scenarios.is_empty() {
                    f.push(FlowFault::new(
                        format!("{ip}.template_scenarios"),
                        FaultKind::Missing,
                        "a product_list item needs at least one template scenario",
                    ));
                }
            }
            _ => {}
        }
    }

    // Each option's title must fit where its parent shows it: a reply
    // button (3 options or fewer on a button item) or a list row.
    for (j, it) in s.items.iter().enumerate() {
        let Some(kind) = ItemType::parse(&it.kind) else {
            continue;
        };
        if !kind.offers_options() {
            continue;
        }
        let max = limits::option_title_max(kind, it.children.len());
        for &k in &edges[j] {
            let child = &s.items[k];
            let cp = format!("{p}.items[{k}].title");
            match child.title.as_deref() {
                None => f.push(FlowFault::new(
                    cp,
                    FaultKind::Missing,
                    format!(
                        "an option of {:?} needs a title (shown on its {})",
                        it.r#ref,
                        limits::option_place(kind, it.children.len())
                    ),
                )),
                Some(t) if t.trim().is_empty() => {
                    f.push(FlowFault::new(cp, FaultKind::Missing, "must not be empty"))
                }
                Some(t) => {
                    let n = t.chars().count();
                    if n > max {
                        f.push(FlowFault::new(
                            cp,
                            FaultKind::TooLong,
                            format!(
                                "{n} characters; Meta allows at most {max} on a {}",
                                limits::option_place(kind, it.children.len())
                            ),
                        ));
                    }
                }
            }
        }
    }

    if let Some((from, to)) = find_cycle(&edges) {
        let c = s.items[from]
            .children
            .iter()
            .position(|r| index.get(r.as_str()) == Some(&to))
            .unwrap_or(0);
        f.push(FlowFault::new(
            format!("{p}.items[{from}].children[{c}]"),
            FaultKind::Cycle,
            format!(
                "{:?} leads back to {:?}: items must not form a cycle",
                s.items[from].r#ref, s.items[to].r#ref
            ),
        ));
    } else if !s.items.is_empty() && parents.iter().all(|p| !p.is_empty()) {
        f.push(FlowFault::new(
            format!("{p}.items"),
            FaultKind::Missing,
            "no root item (one without parents) to start from",
        ));
    }
}

/// The first edge that closes a cycle (depth-first, in file order).
fn find_cycle(edges: &[Vec<usize>]) -> Option<(usize, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // An explicit stack: (node, next edge to look at).
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match mark[to] {
                    Mark::Open => return Some((node, to)),
                    Mark::New => {
                        mark[to] = Mark::Open;
                        stack.push((to, 0));
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok_file() -> Value {
        json!({
            "settings": {"fallback": "Je n'ai pas compris.", "exit_keywords": ["stop", "menu"],
                         "default_scenario": "Accueil"},
            "scenarios": [{
                "title": "Accueil", "type": "client", "keywords": ["bonjour", "menu"],
                "active": true, "repeat_count": 0, "priority": 10,
                "items": [
                    {"ref": "hello", "type": "button", "label": "Que voulez-vous ?",
                     "children": ["offers", "hours", "human"]},
                    {"ref": "offers", "type": "product_list", "title": "Offres",
                     "label": "Nos offres", "template_scenarios": ["summer"]},
                    {"ref": "hours", "type": "text", "title": "Horaires", "label": "9h-18h"},
                    {"ref": "human", "type": "handoff", "title": "Un conseiller",
                     "label": "Un conseiller arrive."}
                ]}],
            "template_scenarios": [{"ref": "summer", "thumbnail_id": "sku-1", "catalog_id": "42",
                "sections": [{"title": "Été", "product_items": ["sku-1", "sku-2"]}]}]
        })
    }

    fn faults(v: Value) -> Vec<FlowFault> {
        match FlowFile::from_value(&v) {
            Err(e) => vec![e],
            Ok(f) => f.validate().err().map(|e| e.0).unwrap_or_default(),
        }
    }

    fn one(v: Value, kind: FaultKind, path: &str) {
        let all = faults(v);
        assert!(
            all.iter().any(|f| f.kind == kind && f.path == path),
            "expected {kind:?} at {path}, got {all:?}"
        );
    }

    #[test]
    fn a_good_file_passes_and_round_trips() {
        let f = FlowFile::from_value(&ok_file()).expect("parses");
        f.validate().expect("valid");
        let back = serde_json::to_value(&f).expect("serialise");
        assert_eq!(FlowFile::from_value(&back).expect("again"), f);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let mut v = ok_file();
        v["scenarios"][0]["items"][2]["colour"] = json!("red");
        one(v, FaultKind::Syntax, "scenarios[0].items[2].colour");
        let mut v = ok_file();
        v["extra"] = json!(1);
        one(v, FaultKind::Syntax, "$.extra");
        let mut v = ok_file();
        v["template_scenarios"][0]["sections"][0]["x"] = json!(1);
        one(v, FaultKind::Syntax, "template_scenarios[0].sections[0].x");
        let mut v = ok_file();
        v["scenarios"][0]["repeat_count"] = json!("twice");
        one(v, FaultKind::Syntax, "scenarios[0]");
    }

    #[test]
    fn dangling_child() {
        let mut v = ok_file();
        v["scenarios"][0]["items"][0]["children"][1] = json!("nowhere");
        one(
            v,
            FaultKind::DanglingRef,
            "scenarios[0].items[0].children[1]",
        );
        let mut v = ok_file();
        v["scenarios"][0]["items"][1]["template_scenarios"][0] = json!("winter");
        one(
            v,
            FaultKind::DanglingRef,
            "scenarios[0].items[1].template_scenarios[0]",
        );
    }

    #[test]
    fn cycle() {
        let mut v = ok_file();
        v["scenarios"][0]["items"][2]["children"] = json!(["hello"]);
        one(v, FaultKind::Cycle, "scenarios[0].items[2].children[0]");
        let mut v = ok_file();
        v["scenarios"][0]["items"][2]["children"] = json!(["hours"]);
        one(v, FaultKind::Cycle, "scenarios[0].items[2].children[0]");
    }

    #[test]
    fn unknown_type() {
        let mut v = ok_file();
        v["scenarios"][0]["items"][2]["type"] = json!("carousel");
        one(v, FaultKind::UnknownType, "scenarios[0].items[2].type");
        let mut v = ok_file();
        v["scenarios"][0]["type"] = json!("global");
        one(v, FaultKind::UnknownType, "scenarios[0].type");
    }

    #[test]
    fn titles_over_metas_limits() {
        // Three options: reply buttons, 20 characters.
        let mut v = ok_file();
        v["scenarios"][0]["items"][2]["title"] = json!("Horaires d'ouverture!");
        one(v, FaultKind::TooLong, "scenarios[0].items[2].title");
        // The same title fits a list row (24) once there are four options.
        let mut v = ok_file();
        v["scenarios"][0]["items"][2]["title"] = json!("Horaires d'ouverture!");
        v["scenarios"][0]["items"][0]["children"] = json!(["offers", "hours", "human", "more"]);
        v["scenarios"][0]["items"]
            .as_array_mut()
            .expect("items")
            .push(json!({"ref": "more", "type": "text", "title": "Plus", "label": "…"}));
        assert_eq!(faults(v), vec![]);
        let mut v = ok_file();
        v["scenarios"][0]["items"][0]["type"] = json!("list");
        v["scenarios"][0]["items"][2]["title"] = json!("x".repeat(25));
        one(v, FaultKind::TooLong, "scenarios[0].items[2].title");
        let mut v = ok_file();
        v["scenarios"][0]["items"][0]["label"] = json!("x".repeat(1025));
        one(v, FaultKind::TooLong, "scenarios[0].items[0].label");
    }

    #[test]
    fn more_than_ten_options() {
        let mut v = ok_file();
        let items = v["scenarios"][0]["items"].as_array_mut().expect("items");
        let refs: Vec<String> = (0..11).map(|i| format!("o{i}")).collect();
        for r in &refs {
            items.push(json!({"ref": r, "type": "text", "title": r, "label": r}));
        }
        items[0]["children"] = json!(refs);
        one(
            v,
            FaultKind::TooManyOptions,
            "scenarios[0].items[0].children",
        );
    }

    #[test]
    fn every_fault_is_reported() {
        let mut v = ok_file();
        v["scenarios"][0]["items"][0]["children"][0] = json!("nowhere");
        v["scenarios"][0]["items"][2]["type"] = json!("carousel");
        let all = faults(v);
        assert!(all.len() >= 2, "{all:?}");
        let msg = FlowErrors(all).to_string();
        assert!(msg.contains("scenarios[0].items[0].children[0]"), "{msg}");
        assert!(msg.contains("scenarios[0].items[2].type"), "{msg}");
    }
}
