//! Parsing, checking and expanding `#[agent(...)]`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{ToTokens, quote};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprUnary, Fields, Ident, Item, ItemStruct, Lit, LitStr, UnOp};

const KEYS: &str = "name, role, system, priority, temperature, top_p, top_k, repetition_penalty, seed, \
                    max_tokens, history, tools, max_steps, tool_choice, memory, custom_hooks, \
                    read, write, exec, net, peers, children, child_roles, approve";
const GATES: [&str; 4] = ["exec", "write", "fetch", "spawn"];
const PRIORITIES: [&str; 5] = ["Realtime", "High", "Normal", "Low", "Background"];

/// Expands `#[agent(attr)] item`. On misuse, returns the item unchanged plus `compile_error!`s
/// (so the only errors the user sees are ours, each on the token at fault).
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_ast: Item = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(e) => return e.to_compile_error(),
    };
    match expand_item(attr, item_ast) {
        Ok(tokens) => tokens,
        Err(e) => {
            let errors = e.to_compile_error();
            quote! { #item #errors }
        }
    }
}

#[derive(Default)]
struct Attributes {
    name: Option<LitStr>,
    role: Option<LitStr>,
    system: Option<LitStr>,
    priority: Option<Ident>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    max_tokens: Option<usize>,
    history: Option<usize>,
    tools: Option<Vec<LitStr>>,
    max_steps: Option<usize>,
    tool_choice: Option<Ident>,
    custom_hooks: bool,
    memory: bool,
    // Capabilities: any of these makes the spec declare its own.
    read: Option<Vec<LitStr>>,
    write: Option<Vec<LitStr>>,
    exec: Option<Vec<LitStr>>,
    net: Option<Vec<LitStr>>,
    peers: Option<Vec<LitStr>>,
    children: Option<u32>,
    child_roles: Option<Vec<LitStr>>,
    approve: Option<Vec<LitStr>>,
}

impl Attributes {
    /// `Some(expression)` building the declared capabilities, when any capability key is given.
    fn capabilities(&self) -> TokenStream {
        let declared = self.read.is_some()
            || self.write.is_some()
            || self.exec.is_some()
            || self.net.is_some()
            || self.peers.is_some()
            || self.children.is_some()
            || self.child_roles.is_some()
            || self.approve.is_some();
        if !declared {
            return quote! { ::core::option::Option::None };
        }
        let list = |v: &Option<Vec<LitStr>>| v.clone().unwrap_or_default();
        let (read, write, exec, net, peers, approve) = (
            list(&self.read),
            list(&self.write),
            list(&self.exec),
            list(&self.net),
            list(&self.peers),
            list(&self.approve),
        );
        let children = Literal::u32_suffixed(self.children.unwrap_or(0));
        let roles = match &self.child_roles {
            Some(roles) => quote! { ::core::option::Option::Some(&[#(#roles),*]) },
            None => quote! { ::core::option::Option::None },
        };
        quote! {
            ::core::option::Option::Some(::agentos_runtime::__private::declared_capabilities(
                ::agentos_runtime::__private::Declaration {
                    read: &[#(#read),*],
                    write: &[#(#write),*],
                    exec: &[#(#exec),*],
                    net: &[#(#net),*],
                    peers: &[#(#peers),*],
                    children: #children,
                    child_roles: #roles,
                    approve: &[#(#approve),*],
                },
            ))
        }
    }
}

fn expand_item(attr: TokenStream, item: Item) -> syn::Result<TokenStream> {
    let item = check_struct(item)?;
    let attrs = parse_attributes(attr)?;

    let ident = &item.ident;
    let Some(name) = &attrs.name else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[agent] needs `name`, e.g. #[agent(name = \"Researcher\")]",
        ));
    };
    let doc = doc_comment(&item);
    let system = match (&attrs.system, doc) {
        (Some(system), Some(_)) => {
            return Err(syn::Error::new(
                system.span(),
                "the system prompt is given twice, by the doc comment and by `system`; keep one",
            ));
        }
        (Some(system), None) => system.value(),
        (None, Some(doc)) => doc,
        (None, None) => {
            return Err(syn::Error::new(
                ident.span(),
                "an agent needs a system prompt: write it as the struct's doc comment (`/// You are ...`) \
                 or as `system = \"...\"`",
            ));
        }
    };
    let role = attrs
        .role
        .as_ref()
        .map(|r| r.value())
        .unwrap_or_else(|| name.value().to_lowercase());
    let priority = attrs
        .priority
        .clone()
        .unwrap_or_else(|| Ident::new("Normal", Span::call_site()));
    let max_tokens = Literal::usize_suffixed(attrs.max_tokens.unwrap_or(256));
    let history = Literal::usize_suffixed(attrs.history.unwrap_or(4));
    let tools = attrs.tools.clone().unwrap_or_default();
    let max_steps = Literal::usize_suffixed(attrs.max_steps.unwrap_or(8));
    let tool_choice = attrs
        .tool_choice
        .clone()
        .unwrap_or_else(|| Ident::new("Auto", Span::call_site()));
    let memory = attrs.memory;
    let capabilities = attrs.capabilities();

    let mut sampling = Vec::new();
    if let Some(v) = attrs.temperature {
        let v = Literal::f32_suffixed(v);
        sampling.push(quote! { temperature: #v, });
    }
    if let Some(v) = attrs.top_p {
        let v = Literal::f32_suffixed(v);
        sampling.push(quote! { top_p: #v, });
    }
    if let Some(v) = attrs.top_k {
        let v = Literal::usize_suffixed(v);
        sampling.push(quote! { top_k: #v, });
    }
    if let Some(v) = attrs.repetition_penalty {
        let v = Literal::f32_suffixed(v);
        sampling.push(quote! { repetition_penalty: #v, });
    }
    if let Some(v) = attrs.seed {
        let v = Literal::u64_suffixed(v);
        sampling.push(quote! { seed: #v, });
    }

    let hooks = if attrs.custom_hooks {
        quote! {}
    } else {
        quote! { impl ::agentos_runtime::AgentHooks for #ident {} }
    };

    Ok(quote! {
        #item

        impl ::agentos_runtime::Agent for #ident {
            // `..Default::default()` stays even when every sampling key is given, so the
            // expansion keeps compiling when the kernel adds a sampling setting.
            #[allow(clippy::needless_update)]
            fn spec() -> ::agentos_runtime::AgentSpec {
                ::agentos_runtime::AgentSpec {
                    name: ::std::string::String::from(#name),
                    role: ::std::string::String::from(#role),
                    system: ::std::string::String::from(#system),
                    priority: ::agentos_runtime::Priority::#priority,
                    sampling: ::agentos_runtime::__private::SamplingParams {
                        #(#sampling)*
                        ..::core::default::Default::default()
                    },
                    max_tokens: #max_tokens,
                    tools: ::std::vec![#(::std::string::String::from(#tools)),*],
                    max_steps: #max_steps,
                    tool_choice: ::agentos_runtime::ToolChoice::#tool_choice,
                    history_turns: #history,
                    memory: #memory,
                    capabilities: #capabilities,
                }
            }
        }

        #hooks
    })
}

fn check_struct(item: Item) -> syn::Result<ItemStruct> {
    let s = match item {
        Item::Struct(s) => s,
        Item::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span(),
                "#[agent] goes on a struct with named fields, not an enum: an agent's state is a struct",
            ));
        }
        Item::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span(),
                "#[agent] goes on a struct with named fields, not a union",
            ));
        }
        other => {
            return Err(syn::Error::new(
                other.span(),
                "#[agent] goes on a struct with named fields (or a unit struct)",
            ));
        }
    };
    if let Fields::Unnamed(fields) = &s.fields {
        return Err(syn::Error::new(
            fields.span(),
            "#[agent] needs named fields (or a unit struct), not a tuple struct: name the fields of the agent's state",
        ));
    }
    if !s.generics.params.is_empty() {
        return Err(syn::Error::new(
            s.generics.span(),
            "#[agent] roles cannot be generic: the runtime restores each role from its checkpoint by its concrete type",
        ));
    }
    Ok(s)
}

fn parse_attributes(attr: TokenStream) -> syn::Result<Attributes> {
    let mut a = Attributes::default();
    let parser = syn::meta::parser(|meta| {
        let path = &meta.path;
        let key = path.get_ident().map(|i| i.to_string()).unwrap_or_default();
        let duplicate = || syn::Error::new(path.span(), format!("`{key}` is given twice"));
        macro_rules! set_once {
            ($field:ident, $value:expr) => {{
                if a.$field.is_some() {
                    return Err(duplicate());
                }
                a.$field = Some($value);
            }};
        }
        match key.as_str() {
            "name" | "role" | "system" => {
                let value: LitStr = string_value(&meta, &key)?;
                if value.value().trim().is_empty() {
                    return Err(syn::Error::new(value.span(), format!("`{key}` must not be empty")));
                }
                match key.as_str() {
                    "name" => set_once!(name, value),
                    "role" => set_once!(role, value),
                    _ => set_once!(system, value),
                }
            }
            "priority" => {
                let value: Expr = meta.value()?.parse()?;
                let ident = match &value {
                    Expr::Path(p) => p.path.get_ident().cloned(),
                    _ => None,
                };
                match ident {
                    Some(i) if PRIORITIES.contains(&i.to_string().as_str()) => set_once!(priority, i),
                    _ => {
                        return Err(syn::Error::new(
                            value.span(),
                            format!("`priority` is one of {}", PRIORITIES.join(", ")),
                        ));
                    }
                }
            }
            "temperature" => {
                let v = number(&meta, &key)?;
                set_once!(temperature, v.0)
            }
            "top_p" => {
                let (v, span) = number(&meta, &key)?;
                if !(v > 0.0 && v <= 1.0) {
                    return Err(syn::Error::new(span, "`top_p` must be in (0, 1]"));
                }
                set_once!(top_p, v)
            }
            "repetition_penalty" => {
                let (v, span) = number(&meta, &key)?;
                if v <= 0.0 {
                    return Err(syn::Error::new(span, "`repetition_penalty` must be above 0 (1 = off)"));
                }
                set_once!(repetition_penalty, v)
            }
            "top_k" => set_once!(top_k, integer::<usize>(&meta, &key)?.0),
            "seed" => set_once!(seed, integer::<u64>(&meta, &key)?.0),
            "history" => set_once!(history, integer::<usize>(&meta, &key)?.0),
            "max_tokens" => {
                let (v, span) = integer::<usize>(&meta, &key)?;
                if v == 0 {
                    return Err(syn::Error::new(span, "`max_tokens` must be at least 1"));
                }
                set_once!(max_tokens, v)
            }
            "max_steps" => {
                let (v, span) = integer::<usize>(&meta, &key)?;
                if v == 0 {
                    return Err(syn::Error::new(
                        span,
                        "`max_steps` must be at least 1 (it counts the calls one turn may make)",
                    ));
                }
                set_once!(max_steps, v)
            }
            "tool_choice" => {
                let value: LitStr = string_value(&meta, &key)?;
                let variant = match value.value().as_str() {
                    "auto" => "Auto",
                    "first" => "First",
                    "required" => "Required",
                    _ => {
                        return Err(syn::Error::new(
                            value.span(),
                            "`tool_choice` is \"auto\", \"first\" (the first step of a turn is a call) or \"required\" (every step is)",
                        ));
                    }
                };
                set_once!(tool_choice, Ident::new(variant, value.span()))
            }
            "tools" => set_once!(tools, string_list(&meta, &key, "a tool name, e.g. \"search\"")?),
            "read" | "write" => {
                let paths = string_list(&meta, &key, "a directory, or `mount=directory`")?;
                for path in &paths {
                    let value = path.value();
                    let dir = value.split_once('=').map(|(_, d)| d).unwrap_or(&value);
                    if dir.trim().is_empty()
                        || value
                            .split_once('=')
                            .is_some_and(|(m, _)| m.trim().is_empty() || m.contains('/'))
                    {
                        return Err(syn::Error::new(
                            path.span(),
                            "a file grant is a directory (the work directory) or `mount=directory`, e.g. \"docs=/srv/docs\"",
                        ));
                    }
                }
                let work_dirs =
                    |list: &Option<Vec<LitStr>>| list.iter().flatten().filter(|p| !p.value().contains('=')).count();
                let unmounted: Vec<&LitStr> = paths.iter().filter(|p| !p.value().contains('=')).collect();
                if unmounted.len() + work_dirs(&a.read) + work_dirs(&a.write) > 1 {
                    return Err(syn::Error::new(
                        unmounted.last().map(|p| p.span()).unwrap_or_else(|| path.span()),
                        "an agent has one work directory (a grant without `mount=`); give the others a mount name",
                    ));
                }
                match key.as_str() {
                    "read" => set_once!(read, paths),
                    _ => set_once!(write, paths),
                }
            }
            "exec" => set_once!(exec, string_list(&meta, &key, "a program, e.g. \"grep\"")?),
            "net" => set_once!(
                net,
                string_list(&meta, &key, "a host, e.g. \"example.com\" or \"*.example.com\"")?
            ),
            "peers" => {
                let peers = string_list(&meta, &key, "an agent name, or \"*\" for any")?;
                if peers.len() > 1 && peers.iter().any(|p| p.value() == "*") {
                    return Err(syn::Error::new(
                        peers[0].span(),
                        "`peers = [\"*\"]` means any agent; list no names with it",
                    ));
                }
                set_once!(peers, peers)
            }
            "children" => set_once!(children, integer::<u32>(&meta, &key)?.0),
            "child_roles" => set_once!(child_roles, string_list(&meta, &key, "a role name")?),
            "approve" => {
                let gates = string_list(&meta, &key, "a gate")?;
                if let Some(bad) = gates.iter().find(|g| !GATES.contains(&g.value().as_str())) {
                    return Err(syn::Error::new(
                        bad.span(),
                        format!("`approve` lists gates: {}", GATES.join(", ")),
                    ));
                }
                set_once!(approve, gates)
            }
            "custom_hooks" => flag(
                &meta,
                &key,
                &mut a.custom_hooks,
                "`custom_hooks` is a flag without a value: it means you implement AgentHooks yourself",
            )?,
            "memory" => flag(
                &meta,
                &key,
                &mut a.memory,
                "`memory` is a flag without a value: it gives the agent an S-MMU memory instead of a fixed history",
            )?,
            _ => {
                return Err(syn::Error::new(
                    path.span(),
                    format!(
                        "unknown key `{}` in #[agent]; allowed: {KEYS}",
                        path.to_token_stream().to_string().replace(' ', "")
                    ),
                ));
            }
        }
        Ok(())
    });
    parser.parse2(attr)?;
    Ok(a)
}

/// A list of distinct, non-empty string literals (`key = ["a", "b"]`).
fn string_list(meta: &syn::meta::ParseNestedMeta, key: &str, what: &str) -> syn::Result<Vec<LitStr>> {
    let value: Expr = meta.value()?.parse()?;
    let Expr::Array(array) = &value else {
        return Err(syn::Error::new(
            value.span(),
            format!("`{key}` is a list of strings, each {what}"),
        ));
    };
    let mut items: Vec<LitStr> = Vec::new();
    for element in &array.elems {
        match element {
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) if !s.value().trim().is_empty() => {
                if items.iter().any(|t| t.value() == s.value()) {
                    return Err(syn::Error::new(s.span(), format!("this is listed twice in `{key}`")));
                }
                items.push(s.clone());
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!("each item of `{key}` is a non-empty string literal: {what}"),
                ));
            }
        }
    }
    Ok(items)
}

fn string_value(meta: &syn::meta::ParseNestedMeta, key: &str) -> syn::Result<LitStr> {
    let value: Expr = meta.value()?.parse()?;
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{key}` expects a string literal, e.g. {key} = \"...\""),
        )),
    }
}

/// A non-negative number literal (integer or float).
fn number(meta: &syn::meta::ParseNestedMeta, key: &str) -> syn::Result<(f32, Span)> {
    let value: Expr = meta.value()?.parse()?;
    let span = value.span();
    let parsed = match &value {
        Expr::Lit(ExprLit { lit: Lit::Float(f), .. }) => f.base10_parse::<f32>().ok(),
        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => i.base10_parse::<f32>().ok(),
        Expr::Unary(ExprUnary { op: UnOp::Neg(_), .. }) => {
            return Err(syn::Error::new(span, format!("`{key}` must not be negative")));
        }
        _ => None,
    };
    match parsed {
        Some(v) if v.is_finite() => Ok((v, span)),
        _ => Err(syn::Error::new(
            span,
            format!("`{key}` expects a number literal, e.g. {key} = 0.7"),
        )),
    }
}

/// A non-negative integer literal.
/// A key without a value (`custom_hooks`, `memory`): set once, never `key = ...`.
fn flag(meta: &syn::meta::ParseNestedMeta, key: &str, set: &mut bool, with_value: &str) -> syn::Result<()> {
    if *set {
        return Err(syn::Error::new(meta.path.span(), format!("`{key}` is given twice")));
    }
    if meta.input.peek(syn::Token![=]) {
        return Err(syn::Error::new(meta.path.span(), with_value));
    }
    *set = true;
    Ok(())
}

fn integer<T: std::str::FromStr>(meta: &syn::meta::ParseNestedMeta, key: &str) -> syn::Result<(T, Span)>
where
    T::Err: std::fmt::Display,
{
    let value: Expr = meta.value()?.parse()?;
    let span = value.span();
    match &value {
        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => Ok((i.base10_parse::<T>()?, span)),
        _ => Err(syn::Error::new(
            span,
            format!("`{key}` expects a whole number, e.g. {key} = 256"),
        )),
    }
}

/// The struct's doc comment, one line per `///`, with the leading space rustdoc adds removed.
fn doc_comment(item: &ItemStruct) -> Option<String> {
    doc_text(&item.attrs)
}

/// The `///` lines of `attrs`, joined; `None` when there are none or they are blank.
pub(crate) fn doc_text(attrs: &[syn::Attribute]) -> Option<String> {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .map(|line| line.strip_prefix(' ').unwrap_or(&line).trim_end().to_string())
        .collect();
    let text = lines.join("\n").trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("the expansion is a file"))
    }

    #[test]
    fn expands_a_full_role() {
        let attr = quote! {
            name = "Researcher", role = "researcher", priority = High, temperature = 0.7, top_p = 0.9,
            max_tokens = 256, history = 6, tools = ["search", "calculator"], max_steps = 3, memory
        };
        let item = quote! {
            /// You are a meticulous researcher.
            /// Cite what you rely on.
            #[derive(Default, Serialize, Deserialize)]
            struct Researcher { notes: Vec<String> }
        };
        insta::assert_snapshot!(pretty(expand(attr, item)));
    }

    #[test]
    fn expands_a_minimal_role_with_custom_hooks() {
        let attr = quote! { name = "Critic", system = "You find flaws.", custom_hooks };
        let item = quote! { struct Critic; };
        insta::assert_snapshot!(pretty(expand(attr, item)));
    }

    #[test]
    fn misuse_keeps_the_item_and_adds_one_error() {
        let out = expand(
            quote! { name = "A", colour = 3 },
            quote! { /// Hi.
            struct A; },
        )
        .to_string();
        assert!(out.contains("struct A"), "{out}");
        assert!(out.contains("unknown key `colour`"), "{out}");
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
    }

    /// Each file under tests/ui is a misuse; its .stderr holds the exact error and span.
    #[test]
    fn compile_errors() {
        trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
    }
}
