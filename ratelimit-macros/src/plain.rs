//! The common handler read as tokens: `[pub] async fn name(..) [-> ..]`, whose attributes
//! give no `cost` and no `reserve`. All the expansion does to it is put the guard in front
//! of its arguments, so nothing of it is parsed: not the arguments, not the return type,
//! not the body (syn, unoptimised in a debug build, is most of the attribute's own time).
//! Anything else, and any error, takes the general path of [`crate::expand`], which reads
//! the signature with syn and says what is wrong.

use proc_macro2::{Delimiter, Group, Ident, Spacing, TokenStream, TokenTree};

use crate::attr::{Args, Errors};
use crate::expand::{MAX_ATTRIBUTES, code, gen_checked_argument, gen_guard, gen_spec, spec_name};
use crate::validate::{Options, validate};

/// The handler rewritten, or `None` when it is not a plain one or anything is wrong.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> Option<TokenStream> {
    let mut trees: Vec<TokenTree> = item.into_iter().collect();
    let block = match trees.pop() {
        Some(TokenTree::Group(block)) if block.delimiter() == Delimiter::Brace => block,
        _ => return None,
    };
    let mut at = 0;
    // Outer attributes: ours are taken (this attribute checks the ones below it too).
    let mut kept = TokenStream::new();
    let mut ours = vec![args];
    while let [TokenTree::Punct(pound), TokenTree::Group(attr), ..] = &trees[at..] {
        if pound.as_char() != '#' || attr.delimiter() != Delimiter::Bracket {
            return None;
        }
        match rate_limit_arguments(attr) {
            Ours::Yes(args) => ours.push(args),
            Ours::No => kept.extend([trees[at].clone(), trees[at + 1].clone()]),
            Ours::Unclear => return None,
        }
        at += 2;
    }
    // `pub`, `pub(..)` or nothing, then `async fn name(..)`.
    let vis_start = at;
    if matches!(&trees.get(at), Some(TokenTree::Ident(ident)) if ident == "pub") {
        at += 1;
        if matches!(&trees.get(at), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
        {
            at += 1;
        }
    }
    let vis: TokenStream = trees[vis_start..at].iter().cloned().collect();
    let (name, arguments) = match &trees[at..] {
        [
            TokenTree::Ident(asyncness),
            TokenTree::Ident(fn_token),
            TokenTree::Ident(name),
            TokenTree::Group(arguments),
            ..,
        ] if asyncness == "async"
            && fn_token == "fn"
            && arguments.delimiter() == Delimiter::Parenthesis =>
        {
            (name.clone(), arguments.clone())
        }
        _ => return None,
    };
    // A receiver or a reservation: the general path says what is wrong or settles it.
    if names_any(arguments.stream(), &["self", "Reservation"]) {
        return None;
    }
    let options = options(ours)?;
    if options
        .iter()
        .any(|o| o.cost.is_some() || o.reserves.is_some())
    {
        return None;
    }

    let (p, private) = crate::expand::private(&options);
    let spec = spec_name(&name);
    let mut expanded = gen_spec(&options, &spec, vis, &name, false, &private, &p);
    expanded.extend(kept);
    expanded.extend(trees[vis_start..at + 3].iter().cloned());
    let guarded = match first_argument(&arguments) {
        // The first argument checked before it is extracted; the others as they are.
        Some((pat, ty, rest)) => {
            let sole = rest
                .iter()
                .all(|tree| matches!(tree, TokenTree::Punct(p) if p.as_char() == ','));
            let mut guarded = gen_checked_argument(&options, &spec, &p, pat, ty, sole);
            if let Some(guarded) = &mut guarded {
                guarded.extend(rest);
            }
            guarded
        }
        None if arguments.stream().is_empty() => None,
        None => return None,
    };
    // No argument, or a key function: a guard of its own in front.
    let guarded = guarded.unwrap_or_else(|| {
        let mut guarded = code(&format!("_: {p}::{},", gen_guard(&options, &spec)));
        guarded.extend(arguments.stream());
        guarded
    });
    let mut guarded = Group::new(Delimiter::Parenthesis, guarded);
    guarded.set_span(arguments.span());
    expanded.extend([TokenTree::Group(guarded)]);
    expanded.extend(trees[at + 4..].iter().cloned());
    expanded.extend([TokenTree::Group(block)]);
    Some(expanded)
}

/// The first argument's pattern and type, and the tokens after it (from its comma on);
/// `None` when there is none, or it is not read as `pattern: type` (attributes of its own).
fn first_argument(arguments: &Group) -> Option<(TokenStream, TokenStream, Vec<TokenTree>)> {
    let trees: Vec<TokenTree> = arguments.stream().into_iter().collect();
    // `<` and `>` are not groups: a comma inside a type's generic arguments is not one
    // between arguments (the `>` of `->` closes nothing).
    let mut depth = 0usize;
    let mut end = trees.len();
    for (at, tree) in trees.iter().enumerate() {
        if let TokenTree::Punct(punct) = tree {
            let after_dash = at > 0
                && matches!(&trees[at - 1], TokenTree::Punct(p) if p.as_char() == '-' && p.spacing() == Spacing::Joint);
            match punct.as_char() {
                ',' if depth == 0 => {
                    end = at;
                    break;
                }
                '<' => depth += 1,
                '>' if !after_dash => depth = depth.checked_sub(1)?,
                _ => {}
            }
        }
    }
    let first = &trees[..end];
    if matches!(first.first(), Some(TokenTree::Punct(p)) if p.as_char() == '#') {
        return None;
    }
    // The pattern ends at the first `:` that is not half of a `::`.
    let colon = first.iter().enumerate().position(|(at, tree)| {
        let TokenTree::Punct(punct) = tree else {
            return false;
        };
        let joined_before = at > 0
            && matches!(&first[at - 1], TokenTree::Punct(p) if p.as_char() == ':' && p.spacing() == Spacing::Joint);
        punct.as_char() == ':' && punct.spacing() == Spacing::Alone && !joined_before
    })?;
    let pat: TokenStream = first[..colon].iter().cloned().collect();
    let ty: TokenStream = first[colon + 1..].iter().cloned().collect();
    if pat.is_empty() || ty.is_empty() {
        return None;
    }
    Some((pat, ty, trees[end..].to_vec()))
}

/// What an outer attribute is to this one.
enum Ours {
    /// `#[rate_limit(..)]` (however imported): its arguments.
    Yes(TokenStream),
    No,
    /// `#[rate_limit]` without arguments, or written in a way this reader does not know.
    Unclear,
}

/// `[path::rate_limit(..)]`'s arguments: a path of identifiers and `::`, then one group.
fn rate_limit_arguments(attr: &Group) -> Ours {
    let mut last: Option<Ident> = None;
    let mut trees = attr.stream().into_iter();
    for tree in trees.by_ref() {
        match tree {
            TokenTree::Ident(ident) => last = Some(ident),
            TokenTree::Punct(colon) if colon.as_char() == ':' => {}
            TokenTree::Group(group) => {
                let named = last.is_some_and(|ident| ident == "rate_limit");
                return match (named, group.delimiter(), trees.next()) {
                    (false, ..) => Ours::No,
                    (true, Delimiter::Parenthesis, None) => Ours::Yes(group.stream()),
                    (true, ..) => Ours::Unclear,
                };
            }
            // `#[doc = ".."]`, `#[path = ..]`, ...
            _ => {
                return if last.is_some_and(|ident| ident == "rate_limit") {
                    Ours::Unclear
                } else {
                    Ours::No
                };
            }
        }
    }
    if last.is_some_and(|ident| ident == "rate_limit") {
        Ours::Unclear
    } else {
        Ours::No
    }
}

/// Each attribute's arguments checked; `None` on any error (the general path reports it).
fn options(arguments: Vec<TokenStream>) -> Option<Vec<Options>> {
    if arguments.len() > MAX_ATTRIBUTES {
        return None;
    }
    let mut errors = Errors::default();
    let options = arguments
        .into_iter()
        .map(|args| {
            syn::parse2::<Args>(args)
                .ok()
                .map(|args| validate(args, &mut errors))
        })
        .collect::<Option<Vec<Options>>>()?;
    errors.finish().ok().map(|()| options)
}

/// Whether `tokens` hold any of `names` as an identifier, at any depth.
fn names_any(tokens: TokenStream, names: &[&str]) -> bool {
    tokens.into_iter().any(|tree| match tree {
        TokenTree::Ident(ident) => names.iter().any(|name| ident == name),
        TokenTree::Group(group) => names_any(group.stream(), names),
        _ => false,
    })
}
