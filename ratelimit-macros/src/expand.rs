//! Expansion: the checked options of every `#[rate_limit]` on a handler turned into one spec
//! item per attribute and the handler with one injected extractor. Small `gen_*` functions,
//! joined in one `quote!`.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Attribute, FnArg, Ident, ItemFn, Pat, ReturnType, Signature, Visibility};

use crate::attr::{Args, Errors};
use crate::validate::{Capacity, Key, Limits, Options, Spanned, validate};

/// The most attributes one handler can carry (the core checks tuples of up to eight).
const MAX_ATTRIBUTES: usize = 8;

/// The driver. This attribute takes the `#[rate_limit]` attributes below it too (they would
/// expand after it), so that everything a handler must pass is checked as one. On any error,
/// the errors beside the user's function, so that the IDE keeps working.
pub(crate) fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => return with_error(error, item),
    };
    let mut errors = Errors::default();
    let mut parsed = vec![syn::parse2::<Args>(args)];
    function.attrs.retain(|attr| {
        let ours = is_rate_limit(attr);
        if ours {
            parsed.push(attr.parse_args::<Args>());
        }
        !ours
    });
    let options: Vec<Options> = parsed
        .into_iter()
        .filter_map(|args| match args {
            Ok(args) => Some(validate(args, &mut errors)),
            Err(error) => {
                errors.push(error);
                None
            }
        })
        .collect();
    check_signature(&function.sig, &mut errors);
    check_reservation(&options, &function.sig, &mut errors);
    if options.len() > MAX_ATTRIBUTES {
        errors.spanned(
            &function.sig.ident,
            format!("at most {MAX_ATTRIBUTES} #[rate_limit] attributes on one handler: join rates in one string, such as \"10/minute;100/hour\""),
        );
    }
    match errors.finish() {
        Ok(()) => expand(&options, function),
        Err(error) => with_error(error, function.into_token_stream()),
    }
}

fn with_error(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#error #item)
}

/// `#[rate_limit(..)]`, however it was imported.
fn is_rate_limit(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "rate_limit")
}

fn check_signature(sig: &Signature, errors: &mut Errors) {
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "#[rate_limit] goes on an `async fn` axum handler: add `async`",
        );
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        errors.spanned(
            receiver,
            "#[rate_limit] goes on a free `async fn` axum handler, not a method: `self` is not an extractor; move the handler out of the `impl` block",
        );
    }
}

/// Whether `ty` names the reservation the handler settles (`Reservation`, however imported).
fn is_reservation(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Reservation" && s.arguments.is_none()))
}

/// The position of the handler's `Reservation` parameter, if any.
fn reservation_parameter(sig: &Signature) -> Option<usize> {
    sig.inputs
        .iter()
        .position(|input| matches!(input, FnArg::Typed(t) if is_reservation(&t.ty)))
}

/// `reserve =` on one attribute at most, and exactly then a `Reservation` parameter to
/// settle it with.
fn check_reservation(options: &[Options], sig: &Signature, errors: &mut Errors) {
    let reserving: Vec<Span> = options.iter().filter_map(|o| o.reserves).collect();
    for extra in reserving.iter().skip(1) {
        errors.push(syn::Error::new(
            *extra,
            "`reserve` on one attribute of a handler only: the handler settles one reservation",
        ));
    }
    let parameters: Vec<&FnArg> = sig
        .inputs
        .iter()
        .filter(|input| matches!(input, FnArg::Typed(t) if is_reservation(&t.ty)))
        .collect();
    for extra in parameters.iter().skip(1) {
        errors.spanned(extra, "one `Reservation` parameter per handler");
    }
    match (reserving.first(), parameters.first()) {
        (Some(span), None) => errors.push(syn::Error::new(
            *span,
            "`reserve` needs the handler to settle what it used: add a parameter `reservation: ratelimit::Reservation` and call `reservation.settle(actual)`",
        )),
        (None, Some(parameter)) => errors.spanned(
            parameter,
            "a `Reservation` parameter is given by an attribute with `reserve = ESTIMATE`: add one, or remove the parameter",
        ),
        _ => {}
    }
}

fn expand(options: &[Options], function: ItemFn) -> TokenStream {
    let private = match options.iter().find_map(|o| o.krate.as_ref()) {
        Some(krate) => quote!(#krate::__private),
        None => quote!(::ratelimit::__private),
    };
    let name = function.sig.ident.clone();
    let specs: Vec<Ident> = (0..options.len())
        .map(|i| format_ident!("__ratelimit_{}_{}", name, i))
        .collect();
    let bound = bound_names(&function.sig.inputs);
    // A reservation is made by the check, which then runs where the handler can take it.
    let deferred = options.iter().any(|o| {
        o.reserves.is_some()
            || o.cost
                .as_ref()
                .is_some_and(|cost| mentions(cost.to_token_stream(), &bound))
    });
    let spec_items: Vec<TokenStream> = options
        .iter()
        .zip(&specs)
        .map(|(options, spec)| {
            // Deferred, every cost is passed to the check; otherwise each is a hook.
            let cost = (!deferred)
                .then(|| gen_cost_hook(options, &private))
                .flatten();
            gen_spec(options, spec, &function.vis, &name, cost, &private)
        })
        .collect();
    let keyed = options
        .iter()
        .any(|o| matches!(o.key, Some(Key::Function(_))));
    let function = if deferred {
        gen_deferred(options, &specs, keyed, function, &private)
    } else {
        let holds = options.iter().any(holds);
        gen_guarded(&specs, keyed, holds, function, &private)
    };
    quote! {
        #(#spec_items)*
        #function
    }
}

/// The hidden item that describes one attribute.
fn gen_spec(
    options: &Options,
    spec: &Ident,
    vis: &Visibility,
    handler: &Ident,
    cost: Option<TokenStream>,
    private: &TokenStream,
) -> TokenStream {
    let policy = gen_policy(options, handler, private);
    let holds = holds(options).then(|| {
        quote!(
            const HOLDS: bool = true;
        )
    });
    let limits = gen_limits_hook(options, private);
    let key = gen_key_hook(options, private);
    let exempt = gen_exempt_hook(options, private);
    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #spec;

        impl #private::Spec for #spec {
            const SPEC: &'static #private::SpecData = {
                static SPEC: #private::SpecData = #private::SpecData::new(#policy);
                &SPEC
            };
            #holds
            #limits
            #key
            #cost
            #exempt
        }
    }
}

/// The attribute's options as a `PolicyData` literal: data, made a `Policy` on first use.
fn gen_policy(options: &Options, handler: &Ident, private: &TokenStream) -> TokenStream {
    let some = |value: TokenStream| quote!(::core::option::Option::Some(#value));
    let none = quote!(::core::option::Option::None);
    let limits = match &options.limits {
        Limits::Literal(lit) => some(quote!(#lit)),
        Limits::Function(_) => none.clone(),
    };
    // Tuning of limits given as a function is applied by its hook.
    let literal = matches!(options.limits, Limits::Literal(_));
    let algorithm = match (&options.algorithm, literal) {
        (Some(algorithm), true) => some(gen_algorithm(algorithm, private)),
        _ => none.clone(),
    };
    let burst = match (options.burst, literal) {
        (Some(burst), true) => {
            let burst = burst.get();
            some(quote!(#private::NonZeroU64::new(#burst).expect("checked by #[rate_limit]")))
        }
        _ => none.clone(),
    };
    let key = match &options.key {
        Some(Key::Ip) => some(quote!(#private::KeySource::Ip)),
        Some(Key::Global) => some(quote!(#private::KeySource::Global)),
        Some(Key::Header(name)) => some(quote!(#private::KeySource::Header(
            #private::HeaderName::from_static(#name)
        ))),
        Some(Key::Function(_)) => some(quote!(#private::KeySource::Custom)),
        None => none.clone(),
    };
    let scope = match &options.scope {
        Some(scope) => some(quote!(#scope)),
        None => none.clone(),
    };
    let error_message = match &options.error_message {
        Some(message) => some(quote!(#message)),
        None => none.clone(),
    };
    let reserves = options.reserves.is_some();
    let concurrency = match options.concurrency {
        Some(slots) => {
            let slots = slots.get();
            some(quote!(#private::NonZeroU32::new(#slots).expect("checked by #[rate_limit]")))
        }
        None => none.clone(),
    };
    let capacity = match &options.capacity {
        Some(Capacity::Adaptive { min, max }) => {
            some(quote!(#private::CapacityLimit::adaptive().min(#min).max(#max)))
        }
        Some(Capacity::Fixed(limit)) => some(quote!(#private::CapacityLimit::fixed(#limit))),
        None => none.clone(),
    };
    let queue = match options.queue {
        Some(nanos) => some(quote!(#private::Duration::from_nanos(#nanos))),
        None => none,
    };
    quote! {
        #private::PolicyData {
            handler: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#handler)),
            limits: #limits,
            algorithm: #algorithm,
            burst: #burst,
            key: #key,
            scope: #scope,
            error_message: #error_message,
            reserves: #reserves,
            concurrency: #concurrency,
            capacity: #capacity,
            queue: #queue,
        }
    }
}

fn gen_tuned(limits: TokenStream, options: &Options, private: &TokenStream) -> TokenStream {
    let algorithm = options.algorithm.as_ref().map(|algorithm| {
        let algorithm = gen_algorithm(algorithm, private);
        quote!(.with_algorithm(#algorithm))
    });
    let burst = options.burst.map(|burst| {
        let burst = burst.get();
        quote!(.with_burst(#private::NonZeroU64::new(#burst).expect("checked by #[rate_limit]")))
    });
    quote!(#limits #algorithm #burst)
}

/// The algorithm by its place in the core's one table.
fn gen_algorithm(
    algorithm: &Spanned<ratelimit_core::Algorithm>,
    private: &TokenStream,
) -> TokenStream {
    let index = algorithm.value.index();
    quote_spanned!(algorithm.span=> #private::Algorithm::ALL[#index])
}

fn gen_limits_hook(options: &Options, private: &TokenStream) -> Option<TokenStream> {
    let Limits::Function(path) = &options.limits else {
        return None;
    };
    let call = quote_spanned!(path.span()=> #private::LimitsRef::from(#path(parts)));
    let call = if options.algorithm.is_some() || options.burst.is_some() {
        let tuned = gen_tuned(quote!(#call.limits().clone()), options, private);
        quote!(#private::LimitsRef::Owned(#tuned))
    } else {
        call
    };
    Some(quote! {
        const LIMITS: ::core::option::Option<
            fn(&#private::Parts) -> ::core::option::Option<#private::LimitsRef>,
        > = {
            fn limits(parts: &#private::Parts) -> ::core::option::Option<#private::LimitsRef> {
                ::core::option::Option::Some(#call)
            }
            ::core::option::Option::Some(limits)
        };
    })
}

fn gen_key_hook(options: &Options, private: &TokenStream) -> Option<TokenStream> {
    let Some(Key::Function(path)) = &options.key else {
        return None;
    };
    let call = quote_spanned!(path.span()=> #path(parts));
    Some(quote! {
        const KEYED: bool = true;

        fn key(parts: &#private::Parts) -> impl ::core::future::Future<Output = ::core::result::Result<#private::Identity, #private::Rejection>> + ::core::marker::Send {
            #[allow(unused_imports)]
            use #private::{KeyFromFuture as _, KeyFromValue as _};
            #private::Probe::new(#call).key_future()
        }
    })
}

fn gen_exempt_hook(options: &Options, private: &TokenStream) -> Option<TokenStream> {
    let path = options.exempt_when.as_ref()?;
    let call = quote_spanned!(path.span()=> #path(parts));
    Some(quote! {
        const EXEMPT: ::core::option::Option<fn(&#private::Parts) -> bool> = {
            fn exempt(parts: &#private::Parts) -> bool {
                #call
            }
            ::core::option::Option::Some(exempt)
        };
    })
}

fn gen_cost_hook(options: &Options, private: &TokenStream) -> Option<TokenStream> {
    options.cost.as_ref()?;
    let cost = gen_cost(options, private);
    Some(quote! {
        const COST: ::core::option::Option<fn(&#private::Parts) -> u64> = {
            fn cost(_parts: &#private::Parts) -> u64 {
                #cost
            }
            ::core::option::Option::Some(cost)
        };
    })
}

/// An attribute's cost: its expression as an integer, or 1.
fn gen_cost(options: &Options, private: &TokenStream) -> TokenStream {
    match &options.cost {
        Some(cost) => quote_spanned!(cost.span()=> <_ as #private::Cost>::units(#cost)),
        None => quote!(1u64),
    }
}

/// The guard type: every attribute's spec, as one tuple.
fn gen_guard_type(wrapper: &str, specs: &[Ident], private: &TokenStream) -> TokenStream {
    let wrapper = Ident::new(wrapper, Span::call_site());
    quote!(#private::#wrapper<(#(#specs,)*)>)
}

/// Whether the request holds something while the handler runs: a slot or a place in the
/// route's capacity.
fn holds(options: &Options) -> bool {
    options.concurrency.is_some() || options.capacity.is_some()
}

/// The handler with a `Guard` in front of its arguments: the check runs before any of them
/// is extracted, and the body is untouched. The costs, which need no argument, go in a hook.
/// A key function, which may be `async`, is awaited by a `KeyedGuard`; slots and capacity
/// are held by a `HoldingGuard` (a plain `Guard` holds nothing, and needs no drop code).
fn gen_guarded(
    specs: &[Ident],
    keyed: bool,
    holds: bool,
    function: ItemFn,
    private: &TokenStream,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = function;
    let wrapper = match (keyed, holds) {
        (true, _) => "KeyedGuard",
        (false, true) => "HoldingGuard",
        (false, false) => "Guard",
    };
    let guard = gen_guard_type(wrapper, specs, private);
    sig.inputs.insert(0, syn::parse_quote!(_: #guard));
    quote! {
        #(#attrs)*
        #vis #sig #block
    }
}

/// The handler with a `Deferred` in front of its arguments: keys and limits are found before
/// the body is read, and the check runs once the arguments (which a cost uses) are extracted.
/// The handler stays an `async fn` (attributes below this one see what they expect); its
/// body moves into an `async move` block that keeps the handler's return type for `?` and
/// `return`, which the core's `Run` future polls once the check passes.
fn gen_deferred(
    options: &[Options],
    specs: &[Ident],
    keyed: bool,
    function: ItemFn,
    private: &TokenStream,
) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        mut sig,
        block,
    } = function;
    let wrapper = if keyed { "KeyedDeferred" } else { "Deferred" };
    let guard_type = gen_guard_type(wrapper, specs, private);
    // The reservation is no extractor: the check makes it, and binds it for the body.
    let reservation = reservation_parameter(&sig).and_then(|at| {
        let mut inputs: Vec<FnArg> = std::mem::take(&mut sig.inputs).into_iter().collect();
        let taken = inputs.remove(at);
        sig.inputs = inputs.into_iter().collect();
        match taken {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        }
    });
    sig.inputs
        .insert(0, syn::parse_quote!(__ratelimit_guard: #guard_type));
    let body = match (&sig.output, contains_impl(&sig.output)) {
        // Tells the block what it returns, so that `?` and `return` inside it infer as they
        // did in the handler.
        (ReturnType::Type(_, output), false) => {
            quote!(#private::returns::<#output, _>(async move #block))
        }
        (ReturnType::Default, _) => quote!(#private::returns::<(), _>(async move #block)),
        (ReturnType::Type(..), true) => quote!(async move #block),
    };
    let output = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    sig.output = syn::parse_quote!(-> ::core::result::Result<#output, #private::Rejection>);
    let costs = options.iter().map(|options| gen_cost(options, private));
    let len = options.len();
    let run = match &reservation {
        // The check makes the reservation, which the body is given: checked first, then run.
        Some(syn::PatType { pat, ty, .. }) => quote! {
            let (__ratelimit_slots, __ratelimit_reservation) =
                __ratelimit_guard.reserving(&__ratelimit_costs).await?;
            let #pat: #ty = __ratelimit_reservation;
            let __ratelimit_output = #body.await;
            // The request's concurrency slots, if any, are held until the body completes.
            ::core::mem::drop(__ratelimit_slots);
            ::core::result::Result::Ok(__ratelimit_output)
        },
        // One future checks, then runs the body holding the slots: one `await` here.
        None => quote! {
            __ratelimit_guard.run(&__ratelimit_costs, #body).await
        },
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            let __ratelimit_costs: [u64; #len] = [#(#costs),*];
            #run
        }
    }
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

/// Whether the return type holds an `impl Trait`, which cannot be named as a type argument.
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
