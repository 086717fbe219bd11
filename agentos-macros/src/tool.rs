//! Expanding `#[tool]` on an async fn into a type that implements `agentos_runtime::Tool`.
//!
//! For `async fn read_counter(name: String, step: Option<u32>) -> Result<u64, String>` it keeps
//! the function and adds `pub struct ReadCounterTool;` whose `name()` is `"read_counter"`, whose
//! description is the doc comment, whose schema lists the arguments (each type's schema comes
//! from `agentos_runtime::syscall::ToolArgument`, so an argument type without one is a compile
//! error at that type; `Option` arguments are not required), and whose `call` deserialises the
//! arguments (unknown fields refused), awaits the function and serialises what it returns (an
//! `Err` becomes the call's error, by its `Display`).

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::agent::doc_text;

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_fn(attr, item.clone()) {
        Ok(tokens) => tokens,
        Err(e) => {
            let errors = e.to_compile_error();
            quote! { #item #errors }
        }
    }
}

fn expand_fn(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new(
            attr.span(),
            "#[tool] takes no arguments: the function's name is the tool's name, its doc comment the description",
        ));
    }
    let function: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[tool] goes on an async fn, e.g. `async fn add(a: i64, b: i64) -> i64`",
        )
    })?;
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        return Err(syn::Error::new(
            signature.fn_token.span(),
            "a tool is an async fn (its calls run on the runtime's tasks): write `async fn`",
        ));
    }
    if !signature.generics.params.is_empty() {
        return Err(syn::Error::new(
            signature.generics.span(),
            "a tool cannot be generic: its argument schema is fixed when it is registered",
        ));
    }
    let Some(description) = doc_text(&function.attrs) else {
        return Err(syn::Error::new(
            signature.ident.span(),
            "a tool needs a description for the model: write it as the fn's doc comment (`/// Adds ...`)",
        ));
    };

    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in &signature.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "a tool is a free async fn, not a method: it cannot take `self`",
                ));
            }
            FnArg::Typed(typed) => {
                let Pat::Ident(pat) = &*typed.pat else {
                    return Err(syn::Error::new(
                        typed.pat.span(),
                        "a tool's arguments are plain names (each is a field of the call's JSON arguments)",
                    ));
                };
                if let Type::Reference(reference) = &*typed.ty {
                    return Err(syn::Error::new(
                        reference.span(),
                        "a tool's arguments are owned values (they are deserialised from JSON): use `String` for `&str`",
                    ));
                }
                names.push(pat.ident.clone());
                types.push((*typed.ty).clone());
            }
        }
    }

    let fn_name = &signature.ident;
    let tool_name = fn_name.to_string();
    let struct_name = format_ident!("{}Tool", camel_case(&tool_name));
    let field_names: Vec<String> = names.iter().map(Ident::to_string).collect();
    let call = if returns_result(&signature.output) {
        quote! { #fn_name(#(args.#names),*).await.map_err(|e| e.to_string())? }
    } else {
        quote! { #fn_name(#(args.#names),*).await }
    };
    let vis = &function.vis;
    let doc = format!(
        "The `{tool_name}` tool (made by `#[tool]` from `{tool_name}`): register it with `AgentOsBuilder::tool({struct_name})`."
    );
    let private = quote! { ::agentos_runtime::__private };

    Ok(quote! {
        #function

        #[doc = #doc]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #struct_name;

        impl ::agentos_runtime::Tool for #struct_name {
            fn name(&self) -> &str {
                #tool_name
            }

            fn description(&self) -> &str {
                #description
            }

            fn parameters(&self) -> #private::serde_json::Value {
                let mut properties = #private::serde_json::Map::new();
                let mut required: ::std::vec::Vec<#private::serde_json::Value> = ::std::vec::Vec::new();
                #(
                    properties.insert(
                        ::std::string::String::from(#field_names),
                        <#types as ::agentos_runtime::syscall::ToolArgument>::schema(),
                    );
                    if <#types as ::agentos_runtime::syscall::ToolArgument>::REQUIRED {
                        required.push(#private::serde_json::Value::from(#field_names));
                    }
                )*
                #private::serde_json::json!({
                    "type": "object",
                    "properties": properties,
                    "required": required,
                    "additionalProperties": false,
                })
            }

            fn call(&self, arguments: #private::serde_json::Value) -> ::agentos_runtime::ToolFuture {
                #[derive(#private::serde::Deserialize)]
                #[serde(crate = "::agentos_runtime::__private::serde", deny_unknown_fields)]
                struct Arguments {
                    #(#names: #types,)*
                }
                ::std::boxed::Box::pin(async move {
                    let args: Arguments = #private::serde_json::from_value(arguments)
                        .map_err(|e| ::std::format!("bad arguments: {e}"))?;
                    let output = #call;
                    #private::serde_json::to_value(output).map_err(|e| ::std::format!("cannot serialise the result: {e}"))
                })
            }
        }
    })
}

/// `read_counter` → `ReadCounter`.
fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// Whether the fn returns `Result<..>` (by the last path segment, as written).
fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(path) => path.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("the expansion is a file"))
    }

    #[test]
    fn expands_an_async_fn() {
        let item = quote! {
            /// Reads a counter by name and returns its value after adding `step`.
            pub async fn read_counter(name: String, step: Option<u32>) -> Result<u64, String> {
                Ok(step.unwrap_or(0) as u64 + name.len() as u64)
            }
        };
        insta::assert_snapshot!(pretty(expand(TokenStream::new(), item)));
    }

    #[test]
    fn names_become_camel_case_types() {
        assert_eq!(camel_case("read_counter"), "ReadCounter");
        assert_eq!(camel_case("add"), "Add");
        assert_eq!(camel_case("__x__y"), "XY");
    }
}
