//! The common handler read as tokens: `[pub] async fn name(..) [-> ..]`, whose attributes
//! give no `cost` and no `reserve`. All the expansion does to it is put the guard in front
//! of its arguments, so nothing of it is parsed: not the arguments, not the return type,
//! not the body (syn, unoptimised in a debug build, is most of the attribute's own time).
//! Anything else, and any error, takes the general path of [`crate::expand`], which reads
//! the signature with syn and says what is wrong.

use std::collections::HashSet;

use proc_macro2::{Delimiter, Group, Ident, Punct, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::Pat;
use syn::parse::Parser;

use crate::attr::{Args, Errors};
use crate::expand::{
    MAX_ATTRIBUTES, gen_checked_argument, gen_costed_parts, gen_guard, gen_spec, mentions,
    names_any, pat_names, rebuild, spec_name, with_binding,
};
use crate::validate::{Key, Options, validate};

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
    if options.iter().any(|o| o.reserves.is_some()) {
        return None;
    }
    let inputs = split_arguments(&arguments)?;
    let costed = costed_last(&options, &inputs)?;

    let (p, private) = crate::expand::private(&options);
    let spec = spec_name(&name);
    let mut expanded = gen_spec(&options, &spec, vis, &name, costed.is_some(), &private, &p);
    let (guarded, block) = match costed {
        // A cost from the last argument, checked in its extractor; the others as they are.
        Some(pat) => {
            let (last, earlier) = inputs.split_last().expect("a costed argument");
            let ty: TokenStream = last.ty.iter().cloned().collect();
            let parts = gen_costed_parts(&options, &spec, &pat, ty, &private, &p);
            expanded.extend(parts.item);
            let mut guarded = TokenStream::new();
            for input in earlier {
                input.to_tokens(&mut guarded);
                guarded.extend([TokenTree::Punct(Punct::new(',', Spacing::Alone))]);
            }
            guarded.extend(parts.argument);
            (guarded, with_binding(parts.binding, block))
        }
        None => {
            // The first argument checked before it is extracted, or with none (or a key
            // function) a guard of its own in front.
            let checked = inputs.first().and_then(|first| {
                let pat = first.pat.iter().cloned().collect();
                let ty = first.ty.iter().cloned().collect();
                gen_checked_argument(&options, &spec, &p, pat, ty, inputs.len() == 1)
            });
            let guarded = match checked {
                Some(mut guarded) => {
                    for input in &inputs[1..] {
                        guarded.extend([TokenTree::Punct(Punct::new(',', Spacing::Alone))]);
                        input.to_tokens(&mut guarded);
                    }
                    guarded
                }
                None => {
                    let mut guarded = gen_guard(&options, &spec, &p);
                    guarded.extend(arguments.stream());
                    guarded
                }
            };
            (guarded, block)
        }
    };
    expanded.extend(kept);
    expanded.extend(trees[vis_start..at + 3].iter().cloned());
    let mut guarded = Group::new(Delimiter::Parenthesis, guarded);
    guarded.set_span(arguments.span());
    expanded.extend([TokenTree::Group(guarded)]);
    expanded.extend(trees[at + 4..].iter().cloned());
    expanded.extend([TokenTree::Group(block)]);
    Some(expanded)
}

/// One argument as written: its pattern, its `:`, its type.
struct Input {
    pat: Vec<TokenTree>,
    colon: TokenTree,
    ty: Vec<TokenTree>,
}

impl Input {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(self.pat.iter().cloned());
        tokens.extend([self.colon.clone()]);
        tokens.extend(self.ty.iter().cloned());
    }
}

/// The arguments, each read as `pattern: type`; `None` when one is not (attributes of its
/// own).
fn split_arguments(arguments: &Group) -> Option<Vec<Input>> {
    let trees: Vec<TokenTree> = arguments.stream().into_iter().collect();
    let mut inputs = Vec::new();
    // `<` and `>` are not groups: a comma inside a type's generic arguments is not one
    // between arguments (the `>` of `->` closes nothing).
    let mut depth = 0usize;
    let mut start = 0;
    for at in 0..=trees.len() {
        let punct = match trees.get(at) {
            Some(TokenTree::Punct(punct)) => Some(punct.as_char()),
            Some(_) => None,
            None => Some(','),
        };
        let after_dash = at > 0
            && matches!(&trees[at - 1], TokenTree::Punct(p) if p.as_char() == '-' && p.spacing() == Spacing::Joint);
        match punct {
            Some(',') if depth == 0 => {
                if at > start {
                    inputs.push(input(&trees[start..at])?);
                }
                start = at + 1;
            }
            Some('<') => depth += 1,
            Some('>') if !after_dash => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    Some(inputs)
}

/// One argument's tokens as `pattern: type`: the pattern ends at the first `:` that is not
/// half of a `::`.
fn input(trees: &[TokenTree]) -> Option<Input> {
    if matches!(trees.first(), Some(TokenTree::Punct(p)) if p.as_char() == '#') {
        return None;
    }
    let colon = trees.iter().enumerate().position(|(at, tree)| {
        let TokenTree::Punct(punct) = tree else {
            return false;
        };
        let joined_before = at > 0
            && matches!(&trees[at - 1], TokenTree::Punct(p) if p.as_char() == ':' && p.spacing() == Spacing::Joint);
        punct.as_char() == ':' && punct.spacing() == Spacing::Alone && !joined_before
    })?;
    if colon == 0 || colon + 1 == trees.len() {
        return None;
    }
    Some(Input {
        pat: trees[..colon].to_vec(),
        colon: trees[colon].clone(),
        ty: trees[colon + 1..].to_vec(),
    })
}

/// With a cost that uses the arguments: the last argument's pattern, when the costs use
/// only what it binds and a `CostedArg` can take it apart and put it back (as
/// `expand::costed_argument` decides); `Some(None)` when no cost uses any argument (costs,
/// if any, are hooks); `None` for the general path. Every name in an earlier argument's
/// pattern counts as bound there (a path too: when in doubt, the general path).
fn costed_last(options: &[Options], inputs: &[Input]) -> Option<Option<Pat>> {
    let costs: Vec<TokenStream> = options
        .iter()
        .filter_map(|o| o.cost.as_ref().map(ToTokens::to_token_stream))
        .collect();
    if costs.is_empty() {
        return Some(None);
    }
    let uses = |names: &HashSet<String>| costs.iter().any(|cost| mentions(cost.clone(), names));
    if !uses(&idents(inputs.iter().flat_map(|input| &input.pat))) {
        return Some(None);
    }
    let keyed = options
        .iter()
        .any(|o| matches!(o.key, Some(Key::Function(_))));
    let (last, earlier) = inputs.split_last()?;
    if keyed || uses(&idents(earlier.iter().flat_map(|input| &input.pat))) {
        return None;
    }
    let pat = Parser::parse2(Pat::parse_single, last.pat.iter().cloned().collect()).ok()?;
    let ty: TokenStream = last.ty.iter().cloned().collect();
    if !uses(&pat_names(&pat)) || rebuild(&pat).is_none() || names_any(ty, &["impl"]) {
        return None;
    }
    Some(Some(pat))
}

/// Every identifier among `trees`, at any depth.
fn idents<'a>(trees: impl Iterator<Item = &'a TokenTree>) -> HashSet<String> {
    fn walk(tree: &TokenTree, names: &mut HashSet<String>) {
        match tree {
            TokenTree::Ident(ident) => {
                names.insert(ident.to_string());
            }
            TokenTree::Group(group) => group.stream().into_iter().for_each(|t| walk(&t, names)),
            _ => {}
        }
    }
    let mut names = HashSet::new();
    trees.for_each(|tree| walk(tree, &mut names));
    names
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
