//! Expansion: the checked options of every `#[rate_limit]` on a handler turned into one spec
//! item for the handler (a type and a constant array of its attributes' data) and the
//! handler with the check in front of its arguments. Small `gen_*` functions; what names no
//! token of the user's is written as text for the compiler's lexer.
//!
//! What it emits is compiled in every crate of handlers, so it is kept short: the options
//! an attribute does not give are left to the core's defaults, and the handler's body is
//! never parsed, only passed along.

use std::collections::HashSet;

use proc_macro2::{Delimiter, Group, Spacing, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Attribute, FnArg, Ident, Pat, ReturnType, Signature, Visibility};

use crate::attr::{Args, Errors};
use crate::validate::{Capacity, Key, Limits, Options, Spanned, validate};

/// The most attributes one handler can carry (the core checks tuples of up to eight).
pub(crate) const MAX_ATTRIBUTES: usize = 8;

/// The handler as the attribute reads it: its body is kept as written (the expansion moves
/// it, never looks inside), which spares parsing every statement of every handler.
struct Handler {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    block: Group,
}

/// A handler's outer attributes, visibility and signature.
fn parse_head(input: ParseStream<'_>) -> syn::Result<(Vec<Attribute>, Visibility, Signature)> {
    let attrs = input.call(Attribute::parse_outer)?;
    let vis = input.parse()?;
    let sig = input.parse()?;
    Ok((attrs, vis, sig))
}

impl Parse for Handler {
    fn parse(input: ParseStream<'_>) -> syn::Result<Handler> {
        let (attrs, vis, sig) = parse_head(input)?;
        let block: Group = input.parse()?;
        if block.delimiter() != Delimiter::Brace {
            return Err(syn::Error::new(
                block.span(),
                "expected the function's body",
            ));
        }
        Ok(Handler {
            attrs,
            vis,
            sig,
            block,
        })
    }
}

impl Handler {
    /// The handler, its body split off first: syn reads the attributes and the signature
    /// only, and never walks the body's tokens.
    fn split(item: TokenStream) -> syn::Result<Handler> {
        let mut trees: Vec<TokenTree> = item.into_iter().collect();
        let block = match trees.pop() {
            Some(TokenTree::Group(block)) if block.delimiter() == Delimiter::Brace => block,
            // Not a function: syn says what is wrong.
            last => {
                trees.extend(last);
                return syn::parse2(trees.into_iter().collect());
            }
        };
        let (attrs, vis, sig) =
            syn::parse::Parser::parse2(parse_head, trees.into_iter().collect())?;
        Ok(Handler {
            attrs,
            vis,
            sig,
            block,
        })
    }

    /// The handler with `inputs` for its arguments.
    fn with_inputs(self, inputs: TokenStream) -> TokenStream {
        let Handler {
            attrs,
            vis,
            sig,
            block,
        } = self;
        let Signature {
            constness,
            asyncness,
            unsafety,
            abi,
            fn_token,
            ident,
            generics,
            paren_token,
            variadic,
            output,
            ..
        } = sig;
        let mut arguments = inputs;
        variadic.to_tokens(&mut arguments);
        let mut arguments = Group::new(Delimiter::Parenthesis, arguments);
        arguments.set_span(paren_token.span.join());
        let where_clause = &generics.where_clause;
        quote! {
            #(#attrs)* #vis #constness #asyncness #unsafety #abi #fn_token #ident #generics
            #arguments #output #where_clause #block
        }
    }
}

impl ToTokens for Handler {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let attrs = &self.attrs;
        let (vis, sig, block) = (&self.vis, &self.sig, &self.block);
        tokens.extend(quote!(#(#attrs)* #vis #sig #block));
    }
}

/// The driver. This attribute takes the `#[rate_limit]` attributes below it too (they would
/// expand after it), so that everything a handler must pass is checked as one. On any error,
/// the errors beside the user's function, so that the IDE keeps working.
pub(crate) fn rate_limit(args: TokenStream, item: TokenStream) -> TokenStream {
    if let Some(expanded) = crate::plain::expand(args.clone(), item.clone()) {
        return expanded;
    }
    let mut function = match Handler::split(item.clone()) {
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

/// The path of the core's items for the generated code, as text and as tokens.
pub(crate) fn private(options: &[Options]) -> (String, TokenStream) {
    let p = match options.iter().find_map(|o| o.krate.as_ref()) {
        Some(krate) => format!("{}::__private", krate.to_token_stream()),
        None => "::ratelimit::__private".to_owned(),
    };
    let private = code(&p);
    (p, private)
}

/// The handler's spec type: not snake case, so that no local of the rewritten handler can
/// name it.
pub(crate) fn spec_name(handler: &Ident) -> Ident {
    format_ident!("__RateLimit_{}", handler)
}

fn expand(options: &[Options], function: Handler) -> TokenStream {
    let (p, private) = private(options);
    let name = function.sig.ident.clone();
    let spec = spec_name(&name);
    let bound = bound_names(&function.sig.inputs);
    // A reservation is made by the check, which then runs where the handler can take it.
    let deferred = options.iter().any(|o| {
        o.reserves.is_some()
            || o.cost
                .as_ref()
                .is_some_and(|cost| mentions(cost.to_token_stream(), &bound))
    });
    let keyed = options
        .iter()
        .any(|o| matches!(o.key, Some(Key::Function(_))));
    let spec_item = gen_spec(
        options,
        &spec,
        function.vis.to_token_stream(),
        &name,
        deferred,
        &private,
        &p,
    );
    let costed = (deferred && !keyed)
        .then(|| costed_argument(options, &function.sig).cloned())
        .flatten();
    let function = if let Some(last) = costed {
        gen_costed(options, &spec, &last, function, &private, &p)
    } else if deferred {
        gen_deferred(options, &spec, keyed, function, &private)
    } else {
        gen_guarded(options, &spec, function, &p)
    };
    quote! {
        #spec_item
        #function
    }
}

/// Code the expansion writes as text, parsed by the compiler's lexer in one call: what
/// names no token of the user's, and so needs no span of theirs. Quicker than building it
/// token by token through the macro bridge (the macro runs unoptimised in debug builds),
/// and than `proc_macro2`'s own parse, which lexes the text once more first.
pub(crate) fn code(text: &str) -> TokenStream {
    let tokens: proc_macro::TokenStream = text.parse().expect("the expansion writes valid tokens");
    tokens.into()
}

/// The hidden item that describes the handler's attributes: a type whose `TEXT` is one
/// string constant, every attribute's options in order, with their hooks beside it when
/// any attribute has some.
pub(crate) fn gen_spec(
    options: &[Options],
    spec: &Ident,
    vis: TokenStream,
    handler: &Ident,
    deferred: bool,
    private: &TokenStream,
    p: &str,
) -> TokenStream {
    let mut hooks = TokenStream::new();
    let mut table = String::new();
    let mut text = format!("::{handler}\n");
    for (index, options) in options.iter().enumerate() {
        // The strings the attribute gives, as their values.
        let value = |lit: Option<&syn::LitStr>| lit.map(syn::LitStr::value);
        let rates = value(match &options.limits {
            Limits::Literal(lit) => Some(lit),
            Limits::Function(_) => None,
        });
        let scope = value(options.scope.as_ref());
        let message = value(options.error_message.as_ref());
        let mut attribute = attribute_text(options);
        attribute.limits = rates.as_deref();
        attribute.scope = scope.as_deref();
        attribute.error_message = message.as_deref();
        ratelimit_core::attribute::write(&mut text, &attribute);
        let mut fields = String::new();
        let limits = format_ident!("limits_{}", index);
        if let Some(hook) = gen_limits_hook(options, &limits, private) {
            hooks.extend(hook);
            fields.push_str(&format!(
                "limits_of: ::core::option::Option::Some({limits}),"
            ));
        }
        // Deferred, every cost is passed to the check; otherwise each is a hook.
        let cost = format_ident!("cost_{}", index);
        if let Some(hook) = (!deferred)
            .then(|| gen_cost_hook(options, &cost, private))
            .flatten()
        {
            hooks.extend(hook);
            fields.push_str(&format!("cost: ::core::option::Option::Some({cost}),"));
        }
        let exempt = format_ident!("exempt_{}", index);
        if let Some(hook) = gen_exempt_hook(options, &exempt, private) {
            hooks.extend(hook);
            fields.push_str(&format!("exempt: ::core::option::Option::Some({exempt}),"));
        }
        table.push_str(&format!("{p}::Hooks {{ {fields} ..{p}::Hooks::NONE }},"));
    }
    // The handler's path is the module's (known to the compiler) and its name.
    let text =
        format!("const TEXT: &'static str = ::core::concat!(::core::module_path!(), {text:?});");
    let head = format!(
        "#[doc(hidden)] #[allow(non_camel_case_types)] {vis} struct {spec}; \
         impl {p}::Spec for {spec}"
    );
    let mut item = if hooks.is_empty() {
        // The common case, in one piece.
        code(&format!("{head} {{ {text} }}"))
    } else {
        // The hooks (the user's tokens) in the constant's block, before the table; an
        // attribute with every hook leaves `..NONE` with nothing to fill in.
        let mut block = hooks;
        block.extend(code(&format!("&[{table}]")));
        let mut body = code(&format!(
            "{text} #[allow(clippy::needless_update)] const HOOKS: &'static [{p}::Hooks] ="
        ));
        body.extend([
            TokenTree::Group(Group::new(Delimiter::Brace, block)),
            TokenTree::Punct(proc_macro2::Punct::new(';', Spacing::Alone)),
        ]);
        let mut item = code(&head);
        item.extend([TokenTree::Group(Group::new(Delimiter::Brace, body))]);
        item
    };
    if let Some(key) = gen_key_hook(options, private) {
        item.extend(quote! {
            impl #private::KeyedSpec for #spec {
                #key
            }
        });
    }
    item
}

/// What an attribute says that is data, for the core's text of it (hooks aside), but its
/// strings. Tuning of limits given as a function is applied by its hook.
fn attribute_text(options: &Options) -> ratelimit_core::attribute::AttributeText<'_> {
    use ratelimit_core::attribute::{AttributeText, CapacityText, KeyText};
    let literal = match &options.limits {
        Limits::Literal(lit) => Some(lit),
        Limits::Function(_) => None,
    };
    AttributeText {
        limits: None,
        algorithm: literal
            .and(options.algorithm.as_ref())
            .map(|algorithm| algorithm.value),
        burst: literal.and(options.burst),
        key: options.key.as_ref().map(|key| match key {
            Key::Ip => KeyText::Ip,
            Key::Global => KeyText::Global,
            Key::Header(name) => KeyText::Header(name),
            Key::Function(_) => KeyText::Custom,
        }),
        scope: None,
        error_message: None,
        reserves: options.reserves.is_some(),
        concurrency: options.concurrency,
        capacity: options.capacity.as_ref().map(|capacity| match *capacity {
            Capacity::Adaptive { min, max } => CapacityText::Adaptive { min, max },
            Capacity::Fixed(limit) => CapacityText::Fixed(limit),
        }),
        queue: options.queue.map(std::time::Duration::from_nanos),
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

/// `limits = path`: a function named `name` for the attribute's `limits_of`.
fn gen_limits_hook(options: &Options, name: &Ident, private: &TokenStream) -> Option<TokenStream> {
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
        fn #name(parts: &#private::Parts) -> ::core::option::Option<#private::LimitsRef> {
            ::core::option::Option::Some(#call)
        }
    })
}

/// `key = path` on any attribute: `Spec::key`, which awaits the key function of the
/// attribute at `index` (a future, or a plain value made one).
fn gen_key_hook(options: &[Options], private: &TokenStream) -> Option<TokenStream> {
    let calls: Vec<(usize, TokenStream)> = options
        .iter()
        .enumerate()
        .filter_map(|(index, options)| match &options.key {
            Some(Key::Function(path)) => Some((
                index,
                quote_spanned!(path.span()=> #private::Probe::new(#path(parts)).key_future()),
            )),
            _ => None,
        })
        .collect();
    let body = match calls.as_slice() {
        [] => return None,
        // The one key function's future itself.
        [(_, call)] => call.clone(),
        calls => {
            let arms = calls
                .iter()
                .map(|(index, call)| quote!(#index => #call.await,));
            quote! {
                async move {
                    match index {
                        #(#arms)*
                        _ => ::core::result::Result::Ok(#private::Identity::client()),
                    }
                }
            }
        }
    };
    Some(quote! {
        fn key(index: usize, parts: &#private::Parts) -> impl ::core::future::Future<Output = ::core::result::Result<#private::Identity, #private::Rejection>> + ::core::marker::Send {
            #[allow(unused_imports)]
            use #private::{KeyFromFuture as _, KeyFromValue as _};
            let _ = index;
            #body
        }
    })
}

/// `exempt_when = path`: a function named `name` for the attribute's `exempt`.
fn gen_exempt_hook(options: &Options, name: &Ident, private: &TokenStream) -> Option<TokenStream> {
    let path = options.exempt_when.as_ref()?;
    let call = quote_spanned!(path.span()=> #path(parts));
    Some(quote! {
        fn #name(parts: &#private::Parts) -> bool {
            #call
        }
    })
}

/// `cost = EXPR` that uses no argument: a function named `name` for the attribute's `cost`.
fn gen_cost_hook(options: &Options, name: &Ident, private: &TokenStream) -> Option<TokenStream> {
    options.cost.as_ref()?;
    let cost = gen_cost(options, private);
    Some(quote! {
        fn #name(_parts: &#private::Parts) -> u64 {
            #cost
        }
    })
}

/// An attribute's cost: its expression as an integer, or 1.
fn gen_cost(options: &Options, private: &TokenStream) -> TokenStream {
    match &options.cost {
        Some(cost) => quote_spanned!(cost.span()=> <_ as #private::Cost>::units(#cost)),
        None => quote!(1u64),
    }
}

/// Whether the request holds something while the handler runs: a slot or a place in the
/// route's capacity.
fn holds(options: &Options) -> bool {
    options.concurrency.is_some() || options.capacity.is_some()
}

/// The handler whose check needs none of its arguments: the check runs before any of them
/// is extracted, and the body is untouched. The costs, which need no argument, go in a hook.
/// The first argument becomes a checked one (`Checked` or `CheckedParts`), whose pattern
/// binds the argument's own and holds the slots, if any: axum then compiles the handler's
/// extraction for as many extractors as it had. A handler without arguments takes a `Guard`
/// (a `HoldingGuard` for slots and capacity); a key function, which may be `async`, is
/// awaited by a `KeyedGuard` of its own.
fn gen_guarded(options: &[Options], spec: &Ident, mut function: Handler, p: &str) -> TokenStream {
    // The first argument checked before it is extracted.
    let sole = function.sig.inputs.len() == 1;
    if let Some(FnArg::Typed(first)) = function.sig.inputs.first() {
        let attrs = &first.attrs;
        let pat = first.pat.to_token_stream();
        let ty = first.ty.to_token_stream();
        if let Some(checked) = gen_checked_argument(options, spec, p, pat, ty, sole) {
            let mut inputs = quote!(#(#attrs)*);
            inputs.extend(checked);
            for input in function.sig.inputs.iter().skip(1) {
                inputs.extend(quote!(, #input));
            }
            return function.with_inputs(inputs);
        }
    }
    let mut inputs = gen_guard(options, spec, p);
    inputs.extend(std::mem::take(&mut function.sig.inputs).into_token_stream());
    function.with_inputs(inputs)
}

/// The guard argument (`_: Guard<Spec>,`) of a handler whose check needs no argument of it
/// and that has none to check in front of, or a key function to await.
pub(crate) fn gen_guard(options: &[Options], spec: &Ident, p: &str) -> TokenStream {
    let keyed = options
        .iter()
        .any(|o| matches!(o.key, Some(Key::Function(_))));
    let guard = match (keyed, options.iter().any(holds)) {
        // Sized by the number of attributes, which it keeps while it awaits.
        (true, _) => format!("KeyedGuard<{spec}, {}>", options.len()),
        (false, true) => format!("HoldingGuard<{spec}>"),
        (false, false) => format!("Guard<{spec}>"),
    };
    code(&format!("_: {p}::{guard},"))
}

/// The handler's first argument, `pat: ty`, checked before it is extracted: a
/// `CheckedParts` (of several arguments) or a `Checked` (the `sole` one, which may read the
/// body), whose pattern binds the argument's and holds the slots, if any. `None` for a key
/// function (awaited by a `KeyedGuard` of its own).
pub(crate) fn gen_checked_argument(
    options: &[Options],
    spec: &Ident,
    p: &str,
    pat: TokenStream,
    ty: TokenStream,
    sole: bool,
) -> Option<TokenStream> {
    if options
        .iter()
        .any(|o| matches!(o.key, Some(Key::Function(_))))
    {
        return None;
    }
    let wrapper = if sole { "Checked" } else { "CheckedParts" };
    let (held, held_type) = if options.iter().any(holds) {
        ("__ratelimit_slots", format!("{p}::Leases"))
    } else {
        ("_", "()".to_owned())
    };
    let mut pattern = pat;
    pattern.extend(code(&format!(", {held}, _")));
    let mut checked = code(&format!("{p}::{wrapper}"));
    checked.extend([TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        pattern,
    ))]);
    checked.extend(code(&format!(": {p}::{wrapper}<{spec},")));
    checked.extend(ty);
    checked.extend(code(&format!(", {held_type}>")));
    Some(checked)
}

/// The handler's last argument, when the costs that use arguments use only what it binds
/// and it can be taken apart and put back together (a pattern of bindings, tuple structs,
/// structs and tuples), no reservation is made, and the handler is not generic: then a
/// [`gen_costed`] handler checks the request in that argument's extractor.
fn costed_argument<'a>(options: &[Options], sig: &'a Signature) -> Option<&'a syn::PatType> {
    if options.iter().any(|o| o.reserves.is_some()) || !sig.generics.params.is_empty() {
        return None;
    }
    let Some(FnArg::Typed(last)) = sig.inputs.last() else {
        return None;
    };
    if contains_impl_type(&last.ty) || rebuild(&last.pat).is_none() {
        return None;
    }
    let before = sig
        .inputs
        .iter()
        .take(sig.inputs.len() - 1)
        .cloned()
        .collect();
    let earlier = bound_names(&before);
    let only_last = options.iter().all(|o| {
        o.cost
            .as_ref()
            .is_none_or(|cost| !mentions(cost.to_token_stream(), &earlier))
    });
    only_last.then_some(last)
}

/// A pattern of bindings as the expression that builds the value back from them
/// (`Json(batch)` from `Json(batch)`, `mut` dropped); `None` for a pattern that leaves
/// something out (`_`, `..`, `ref`, literals).
pub(crate) fn rebuild(pat: &Pat) -> Option<TokenStream> {
    match pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
            let ident = &p.ident;
            Some(quote!(#ident))
        }
        Pat::TupleStruct(p) if p.qself.is_none() => {
            let path = &p.path;
            let elems = p.elems.iter().map(rebuild).collect::<Option<Vec<_>>>()?;
            Some(quote!(#path(#(#elems),*)))
        }
        Pat::Struct(p) if p.qself.is_none() && p.rest.is_none() => {
            let path = &p.path;
            let fields = p
                .fields
                .iter()
                .map(|field| {
                    let member = &field.member;
                    rebuild(&field.pat).map(|value| quote!(#member: #value))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(quote!(#path { #(#fields),* }))
        }
        Pat::Tuple(p) => {
            let elems = p.elems.iter().map(rebuild).collect::<Option<Vec<_>>>()?;
            Some(quote!((#(#elems,)*)))
        }
        Pat::Paren(p) => rebuild(&p.pat),
        _ => None,
    }
}

/// Whether a type holds an `impl Trait` (an argument's: the handler is generic).
fn contains_impl_type(ty: &syn::Type) -> bool {
    names_any(ty.to_token_stream(), &["impl"])
}

/// The handler with its last argument extracted by a `CostedArg`: keys and limits found
/// before that argument is extracted (before the body is read), the check once the costs,
/// computed from it by the spec's `Costed` impl, are known. The argument binds the user's
/// pattern and holds the request's slots while the body runs (an argument, dropped after
/// the body's own locals, when it completes or is dropped); the body is untouched but for
/// a `let _ = &name;` per name only the costs used, and the return type is the handler's.
fn gen_costed(
    options: &[Options],
    spec: &Ident,
    last: &syn::PatType,
    mut function: Handler,
    private: &TokenStream,
    p: &str,
) -> TokenStream {
    let parts = gen_costed_parts(
        options,
        spec,
        &last.pat,
        last.ty.to_token_stream(),
        private,
        p,
    );
    let before = function.sig.inputs.len() - 1;
    let mut inputs = TokenStream::new();
    for input in function.sig.inputs.iter().take(before) {
        inputs.extend(quote!(#input,));
    }
    inputs.extend(parts.argument);
    function.block = with_binding(parts.binding, function.block.clone());
    let mut expanded = parts.item;
    expanded.extend(function.with_inputs(inputs));
    expanded
}

/// The handler's body behind the `let`s of a [`CostedParts`], if it has any.
pub(crate) fn with_binding(binding: TokenStream, block: Group) -> Group {
    if binding.is_empty() {
        return block;
    }
    let mut body = binding;
    body.extend([TokenTree::Group(block)]);
    Group::new(Delimiter::Brace, body)
}

/// What a cost from the last argument (`pat: ty`) makes of a handler.
pub(crate) struct CostedParts {
    /// The spec's `Costed` impl: the costs from the argument.
    pub(crate) item: TokenStream,
    /// The argument that takes the last one's place.
    pub(crate) argument: TokenStream,
    /// What goes in front of the body: a `let _ = &name;` per name only the costs used (as
    /// used in the body, where the costs were once computed).
    pub(crate) binding: TokenStream,
}

/// [`CostedParts`] of a pattern `costed_argument` (or its token-level peer) accepted.
pub(crate) fn gen_costed_parts(
    options: &[Options],
    spec: &Ident,
    pat: &Pat,
    ty: TokenStream,
    private: &TokenStream,
    p: &str,
) -> CostedParts {
    let rebuilt = rebuild(pat).expect("checked by costed_argument");
    let costs = options.iter().map(|options| gen_cost(options, private));
    let len = options.len();
    let item = quote! {
        impl #private::Costed<#ty, #len> for #spec {
            #[allow(unused_mut, unused_variables, clippy::redundant_locals)]
            fn costs(__ratelimit_value: #ty) -> (#ty, [u64; #len]) {
                let #pat = __ratelimit_value;
                let __ratelimit_costs: [u64; #len] = [#(#costs),*];
                (#rebuilt, __ratelimit_costs)
            }
        }
    };
    // The pattern bound in the argument's first field, the slots in its second.
    let mut argument = code(&format!("{p}::CostedArg"));
    argument.extend([TokenTree::Group(Group::new(
        Delimiter::Parenthesis,
        quote!(#pat, __ratelimit_slots, _),
    ))]);
    argument.extend(code(&format!(": {p}::CostedArg<{spec},")));
    argument.extend(ty);
    argument.extend(code(&format!(", {len}>")));
    // The names the costs use count as used in the body, as they did when the costs were
    // computed there.
    let mut used: Vec<String> = pat_names(pat)
        .into_iter()
        .filter(|name| {
            options.iter().any(|o| {
                o.cost.as_ref().is_some_and(|cost| {
                    mentions(cost.to_token_stream(), &HashSet::from([name.clone()]))
                })
            })
        })
        .collect();
    used.sort();
    let used = used
        .into_iter()
        .map(|name| Ident::new(&name, Span::call_site()));
    let binding = quote! {
        #(let _ = &#used;)*
    };
    CostedParts {
        item,
        argument,
        binding,
    }
}

/// The handler with a `Deferred` in front of its arguments: keys and limits are found before
/// the body is read, and the check runs once the arguments (which a cost uses) are extracted.
/// The handler stays an `async fn` (attributes below this one see what they expect); its
/// body moves into an `async move` block that keeps the handler's return type for `?` and
/// `return`, which the core's `Run` future polls once the check passes.
fn gen_deferred(
    options: &[Options],
    spec: &Ident,
    keyed: bool,
    function: Handler,
    private: &TokenStream,
) -> TokenStream {
    let Handler {
        attrs,
        vis,
        mut sig,
        block,
    } = function;
    let wrapper = Ident::new(
        if keyed { "KeyedDeferred" } else { "Deferred" },
        Span::call_site(),
    );
    let len = options.len();
    let guard_type = quote!(#private::#wrapper<#spec, #len>);
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
    // The body's value typed as the handler's, for what infers from it (`.into()`).
    let annotation = (!contains_impl(&sig.output)).then(|| quote!(: #output));
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
        // A body that cannot leave early runs in place, its value the handler's: the check,
        // then the body while the slots are held (a local dropped after the body's own, when
        // the future completes or is dropped).
        None if runs_in_place(block.stream()) => quote! {
            let __ratelimit_slots = match __ratelimit_guard.checking(&__ratelimit_costs).await {
                ::core::result::Result::Ok(slots) => slots,
                ::core::result::Result::Err(rejection) => return ::core::result::Result::Err(rejection),
            };
            let __ratelimit_output #annotation = #block;
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

/// Macros known not to leave the function they are called in: a body that calls only these
/// runs in place.
const MACROS_IN_PLACE: &[&str] = &[
    "assert",
    "assert_eq",
    "assert_ne",
    "concat",
    "dbg",
    "debug",
    "debug_assert",
    "debug_assert_eq",
    "debug_assert_ne",
    "eprint",
    "eprintln",
    "error",
    "format",
    "format_args",
    "info",
    "json",
    "matches",
    "panic",
    "print",
    "println",
    "stringify",
    "todo",
    "trace",
    "unimplemented",
    "unreachable",
    "vec",
    "warn",
    "write",
    "writeln",
];

/// Whether a handler's body can run in place inside the rewritten handler, whose return type
/// is the body's wrapped in a `Result`: nothing in it leaves the function (no `return`, no
/// `?`, no macro that might expand to them), so its value is the handler's. Anything else
/// keeps its own `async` block.
fn runs_in_place(body: TokenStream) -> bool {
    let mut tokens = body.into_iter().peekable();
    while let Some(tree) = tokens.next() {
        match tree {
            TokenTree::Ident(ident) if ident == "return" => return false,
            TokenTree::Ident(ident) => {
                // `name!` (not `a != b`, whose `!` is joined to the `=`).
                let is_macro = matches!(tokens.peek(),
                    Some(TokenTree::Punct(p)) if p.as_char() == '!' && p.spacing() == Spacing::Alone);
                if is_macro && !MACROS_IN_PLACE.contains(&ident.to_string().as_str()) {
                    return false;
                }
            }
            TokenTree::Punct(punct) if punct.as_char() == '?' => return false,
            TokenTree::Group(group) if !runs_in_place(group.stream()) => return false,
            _ => {}
        }
    }
    true
}

/// The names the handler's argument patterns bind (`batch` in `Json(batch): Json<..>`).
fn bound_names(inputs: &syn::punctuated::Punctuated<FnArg, syn::Token![,]>) -> HashSet<String> {
    let mut names = HashSet::new();
    for input in inputs {
        if let FnArg::Typed(typed) = input {
            names.extend(pat_names(&typed.pat));
        }
    }
    names
}

/// The names a pattern binds.
pub(crate) fn pat_names(pat: &Pat) -> HashSet<String> {
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
    walk(pat, &mut names);
    names
}

/// Whether `tokens` hold an identifier, at any depth, that `named` accepts: the one walk
/// behind the checks below.
fn any_ident(tokens: TokenStream, named: &impl Fn(&Ident) -> bool) -> bool {
    tokens.into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => named(&ident),
        TokenTree::Group(group) => any_ident(group.stream(), named),
        _ => false,
    })
}

/// Whether `tokens` name any of `names`.
pub(crate) fn mentions(tokens: TokenStream, names: &HashSet<String>) -> bool {
    any_ident(tokens, &|ident| names.contains(&ident.to_string()))
}

/// Whether `tokens` hold any of `names` as an identifier (keywords too: `self`, `impl`).
pub(crate) fn names_any(tokens: TokenStream, names: &[&str]) -> bool {
    any_ident(tokens, &|ident| names.iter().any(|name| ident == name))
}

/// Whether the return type holds an `impl Trait`, which cannot be named as a type argument.
fn contains_impl(output: &ReturnType) -> bool {
    match output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => names_any(ty.to_token_stream(), &["impl"]),
    }
}
