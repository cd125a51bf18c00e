//! `[groups]`: named sets of accounts, expanded in linear time.

use super::*;

/// How deep groups may include groups (`all` -> `province` -> `city` is 3).
pub const MAX_GROUP_DEPTH: usize = 64;

/// A group as written: its members, and the file index and span defining it.
#[derive(Clone)]
pub(super) struct GroupDef {
    members: Vec<Spanned<String>>,
    file: usize,
    span: Range<usize>,
}

impl Loader {
    pub(super) fn add_group(&mut self, idx: usize, name: &str, members: Vec<Spanned<String>>, span: Range<usize>) {
        if let Some(GroupDef { file: other, .. }) = self.groups.get(name) {
            let other = self.files[*other].path.display().to_string();
            self.diags.error(&self.files[idx], Some(span), format!("group `{name}` is already defined in {other}"));
            return;
        }
        self.groups.insert(name.to_string(), GroupDef { members, file: idx, span });
    }

    /// Expand groups into sorted account lists, reporting unknown members,
    /// circles (one error each) and nesting deeper than [`MAX_GROUP_DEPTH`].
    ///
    /// One iterative depth-first walk, each group expanded once and its
    /// expansion reused by every group that includes it: a 50-level diamond
    /// costs 100 expansions, not 2^50, and a 50,000-group chain uses no
    /// call stack. A group that cannot be expanded (a circle, too deep, or
    /// including such a group) is left out of the result, with one error
    /// where the problem is; posts naming it fail without another.
    pub(super) fn expand_groups(&mut self) -> BTreeMap<String, Vec<String>> {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        // Each group's direct accounts and included groups (with where they are written).
        let mut accounts: Vec<BTreeSet<String>> = vec![BTreeSet::new(); names.len()];
        let mut children: Vec<Vec<(usize, Range<usize>)>> = vec![Vec::new(); names.len()];
        let mut usable = vec![true; names.len()];
        for (g, name) in names.iter().enumerate() {
            let GroupDef { members, file: idx, span } = &self.groups[name];
            if self.accounts.contains_key(name) {
                let msg = format!("group `{name}` has the same name as an account; rename one of them");
                self.diags.error(&self.files[*idx], Some(span.clone()), msg);
                usable[g] = false;
                continue;
            }
            for member in members {
                let m = member.get_ref();
                if self.accounts.contains_key(m) {
                    accounts[g].insert(m.clone());
                } else if let Some(&child) = index.get(m.as_str()) {
                    children[g].push((child, member.span()));
                } else if !self.declared.contains(m) {
                    let msg = format!("group `{name}` lists `{m}`, which is neither an account nor a group");
                    self.diags.error(&self.files[*idx], span_of(member), msg);
                }
            }
        }

        #[derive(Clone, Copy, PartialEq)]
        enum Visit {
            New,
            /// On the walk's stack, at this position.
            Open(usize),
            Done,
        }
        let mut visit = vec![Visit::New; names.len()];
        let mut depth = vec![0usize; names.len()];
        // A group's expansion, shared with the groups that include it; None when it cannot be expanded.
        let mut expanded: Vec<Option<std::rc::Rc<BTreeSet<String>>>> = vec![None; names.len()];
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..names.len() {
            if visit[root] != Visit::New {
                continue;
            }
            visit[root] = Visit::Open(0);
            stack.push((root, 0));
            while let Some(&mut (g, ref mut next)) = stack.last_mut() {
                if let Some((child, at)) = children[g].get(*next).cloned() {
                    *next += 1;
                    match visit[child] {
                        Visit::New => {
                            visit[child] = Visit::Open(stack.len());
                            stack.push((child, 0));
                        }
                        Visit::Open(from) => {
                            let mut circle: Vec<&str> = stack[from..].iter().map(|&(n, _)| names[n].as_str()).collect();
                            circle.push(&names[child]);
                            let shown = if circle.len() > 12 {
                                format!(
                                    "{} -> ... ({} more) -> {}",
                                    circle[..6].join(" -> "),
                                    circle.len() - 9,
                                    circle[circle.len() - 3..].join(" -> ")
                                )
                            } else {
                                circle.join(" -> ")
                            };
                            let idx = self.groups[&names[g]].file;
                            let msg = format!("groups include each other in a circle: {shown}");
                            self.diags.error(&self.files[idx], Some(at), msg);
                            usable[g] = false;
                        }
                        Visit::Done => {}
                    }
                    continue;
                }
                stack.pop();
                visit[g] = Visit::Done;
                let mut deepest = 0;
                for (child, _) in &children[g] {
                    usable[g] &= expanded[*child].is_some();
                    deepest = deepest.max(depth[*child]);
                }
                depth[g] = deepest + 1;
                if depth[g] > MAX_GROUP_DEPTH {
                    // Said once, by the group that crosses the bound; those above it just fail.
                    if deepest == MAX_GROUP_DEPTH && usable[g] {
                        let GroupDef { file: idx, span, .. } = &self.groups[&names[g]];
                        let msg = format!(
                            "group `{}` nests groups more than {MAX_GROUP_DEPTH} levels deep; flatten it",
                            names[g]
                        );
                        self.diags.error(&self.files[*idx], Some(span.clone()), msg);
                    }
                    usable[g] = false;
                }
                if usable[g] {
                    let mut members = std::mem::take(&mut accounts[g]);
                    for (child, _) in &children[g] {
                        if let Some(set) = &expanded[*child] {
                            members.extend(set.iter().cloned());
                        }
                    }
                    expanded[g] = Some(std::rc::Rc::new(members));
                }
            }
        }
        names.into_iter().zip(expanded).filter_map(|(name, set)| Some((name, set?.iter().cloned().collect()))).collect()
    }
}
