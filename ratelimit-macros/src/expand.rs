//! Turning the checked arguments and the handler into the rewritten handler and its spec.

use std::collections::HashSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, ReturnType};

use crate::attr::{Args, KeyArg, LimitsArg};

/// The driver: on any error, the errors beside the user's function as it was, so that the
/// IDE keeps working.
pub(crate) fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => return with_error(error, item),
    };
    let args = syn::parse2::<Args>(args);
    let not_async = function.sig.asyncness.is_none().then(|| {
        syn::Error::new_spanned(
            function.sig.fn_token,
            "#[rate_limit] goes on an `async fn` axum handler: add `async`",
        )
    });
    match (args, not_async) {
        (Ok(args), None) => expand(args, function),
        (Ok(_), Some(error)) => with_error(error, item),
        (Err(mut error), not_async) => {
            if let Some(more) = not_async {
                error.combine(more);
            }
            with_error(error, item)
        }
    }
}

fn with_error(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item)
}

fn expand(args: Args, function: ItemFn) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let krate = args
        .krate
        .as_ref()
        .map_or_else(|| quote!(::ratelimit), |path| quote!(#path));
    let private = quote!(#krate::__private);
    let name = &sig.ident;
    // Attributes left on the function expand after this one: number ours after them.
    let index = attrs
        .iter()
        .filter(|a| {
            a.path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "rate_limit")
        })
        .count();
    let spec = format_ident!("__ratelimit_{}_{}", name, index);
    let guard = format_ident!("__ratelimit_guard_{}", index);

    let bound = bound_names(&sig.inputs);
    let deferred = args
        .cost
        .as_ref()
        .is_some_and(|cost| mentions(cost.to_token_stream(), &bound));

    // The policy: the attribute's fixed part.
    let mut policy = quote!(#private::Policy::new(::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name))));
    let mut hooks = TokenStream::new();
    match &args.limits {
        LimitsArg::Literal(lit) => {
            let mut limits =
                quote!(#private::Limits::parse(#lit).expect("checked by #[rate_limit]"));
            if let Some(algorithm) = &args.algorithm {
                let variant = algorithm_variant(algorithm);
                limits = quote!(#limits.with_algorithm(#private::Algorithm::#variant));
            }
            if let Some(burst) = &args.burst {
                limits = quote!(#limits.with_burst(#private::NonZeroU64::new(#burst).expect("checked by #[rate_limit]")));
            }
            policy = quote!(#policy.limits(#limits));
        }
        LimitsArg::Function(path) => {
            let mut call = quote_spanned!(path.span()=> #private::LimitsRef::from(#path(parts)));
            if args.algorithm.is_some() || args.burst.is_some() {
                let algorithm = args.algorithm.as_ref().map(|a| {
                    let variant = algorithm_variant(a);
                    quote!(.with_algorithm(#private::Algorithm::#variant))
                });
                let burst = args
                    .burst
                    .as_ref()
                    .map(|b| quote!(.with_burst(#private::NonZeroU64::new(#b).expect("checked by #[rate_limit]"))));
                call = quote!(#private::LimitsRef::Owned(#private::LimitsRef::from(#path(parts)).limits().clone() #algorithm #burst));
            }
            hooks.extend(quote! {
                fn limits(parts: &#private::Parts) -> ::core::option::Option<#private::LimitsRef> {
                    ::core::option::Option::Some(#call)
                }
            });
        }
    }
    match &args.key {
        None => {}
        Some(KeyArg::Ip) => policy = quote!(#policy.key(#private::KeySource::Ip)),
        Some(KeyArg::Global) => policy = quote!(#policy.key(#private::KeySource::Global)),
        Some(KeyArg::Header(lit)) => {
            let lower = lit.value().to_ascii_lowercase();
            policy = quote!(#policy.key(#private::KeySource::Header(#private::HeaderName::from_static(#lower))));
        }
        Some(KeyArg::Function(path)) => {
            policy = quote!(#policy.key(#private::KeySource::Custom));
            let call = quote_spanned!(path.span()=> #path(parts));
            hooks.extend(quote! {
                fn key(parts: &#private::Parts) -> impl ::core::future::Future<Output = #private::Cow<'static, str>> + ::core::marker::Send {
                    #[allow(unused_imports)]
                    use #private::{KeyFromFuture as _, KeyFromValue as _};
                    #private::Probe::new(#call).key_future()
                }
            });
        }
    }
    if let Some(scope) = &args.scope {
        policy = quote!(#policy.scope(#scope));
    }
    if let Some(message) = &args.error_message {
        policy = quote!(#policy.error_message(#message));
    }
    if let (Some(cost), false) = (&args.cost, deferred) {
        let cost = quote_spanned!(cost.span()=> #private::cost(#cost));
        hooks.extend(quote! {
            fn cost(_parts: &#private::Parts) -> u64 {
                #cost
            }
        });
    }
    if let Some(path) = &args.exempt_when {
        let call = quote_spanned!(path.span()=> #path(parts));
        hooks.extend(quote! {
            fn exempt(parts: &#private::Parts) -> bool {
                #call
            }
        });
    }

    let spec_item = quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #spec;

        impl #private::Spec for #spec {
            fn policy() -> &'static #private::Policy {
                static POLICY: #private::LazyLock<#private::Policy> = #private::LazyLock::new(|| #policy);
                &POLICY
            }
            #hooks
        }
    };

    let mut sig = sig;
    let inputs = std::mem::take(&mut sig.inputs);
    if deferred {
        sig.inputs
            .push(syn::parse_quote!(#guard: #private::Deferred<#spec>));
        sig.inputs.extend(inputs);
        let output = match &sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => quote!(#ty),
        };
        let pin_return = (!contains_impl(&sig.output)).then(|| {
            // Pins the block's type to the declared return type, so `?` and `return` inside
            // it infer as they did in the handler (tracing-attributes does the same).
            quote! {
                #[allow(unreachable_code, clippy::diverging_sub_expression)]
                if false {
                    let __ratelimit_return: #output = loop {};
                    return __ratelimit_return;
                }
            }
        });
        sig.output = syn::parse_quote!(-> ::core::result::Result<#output, #private::Rejection>);
        let cost = args.cost.as_ref().expect("deferred means a cost");
        let cost = quote_spanned!(cost.span()=> #private::cost(#cost));
        quote! {
            #spec_item
            #(#attrs)*
            #vis #sig {
                let __ratelimit_cost: u64 = #cost;
                #guard.check(__ratelimit_cost).await?;
                ::core::result::Result::Ok(async move { #pin_return #block }.await)
            }
        }
    } else {
        sig.inputs
            .push(syn::parse_quote!(#guard: #private::Guard<#spec>));
        sig.inputs.extend(inputs);
        quote! {
            #spec_item
            #(#attrs)*
            #vis #sig #block
        }
    }
}

fn algorithm_variant(algorithm: &syn::Ident) -> syn::Ident {
    let variant = match algorithm.to_string().as_str() {
        "fixed_window" => "FixedWindow",
        "sliding_window" => "SlidingWindow",
        "moving_window" => "MovingWindow",
        _ => "Gcra",
    };
    syn::Ident::new(variant, algorithm.span())
}

/// The names the handler's argument patterns bind (`batch` in `Json(batch): Json<..>`).
fn bound_names(inputs: &syn::punctuated::Punctuated<FnArg, syn::Token![,]>) -> HashSet<String> {
    fn walk(pat: &Pat, names: &mut HashSet<String>) {
        match pat {
            Pat::Ident(p) => {
                names.insert(p.ident.to_string());
                if let Some((_, sub)) = &p.subpat {
                    walk(sub, names);
                }
            }
            Pat::TupleStruct(p) => p.elems.iter().for_each(|e| walk(e, names)),
            Pat::Tuple(p) => p.elems.iter().for_each(|e| walk(e, names)),
            Pat::Struct(p) => p.fields.iter().for_each(|f| walk(&f.pat, names)),
            Pat::Reference(p) => walk(&p.pat, names),
            Pat::Slice(p) => p.elems.iter().for_each(|e| walk(e, names)),
            Pat::Type(p) => walk(&p.pat, names),
            Pat::Paren(p) => walk(&p.pat, names),
            _ => {}
        }
    }
    let mut names = HashSet::new();
    for input in inputs {
        if let FnArg::Typed(typed) = input {
            walk(&typed.pat, &mut names);
        }
    }
    names
}

/// Whether `tokens` name any of `names`.
fn mentions(tokens: TokenStream, names: &HashSet<String>) -> bool {
    tokens.into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => names.contains(&ident.to_string()),
        TokenTree::Group(group) => mentions(group.stream(), names),
        _ => false,
    })
}

/// Whether the return type holds an `impl Trait`, which cannot be named in a `let`.
fn contains_impl(output: &ReturnType) -> bool {
    fn has_impl(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|tree| match tree {
            TokenTree::Ident(ident) => ident == "impl",
            TokenTree::Group(group) => has_impl(group.stream()),
            _ => false,
        })
    }
    match output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => has_impl(ty.to_token_stream()),
    }
}
