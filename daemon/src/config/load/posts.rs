//! `[[posts]]`: what to publish, where and when, checked against the
//! accounts, the groups and every target platform's content rules.

use super::*;

/// A post as written, before checks.
pub(super) struct PostDef {
    raw: RawPost,
    file: usize,
    span: Range<usize>,
    /// Where each `overrides.<platform>` key is.
    override_spans: BTreeMap<String, Range<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPost {
    id: Spanned<String>,
    title: Option<String>,
    body: Option<String>,
    link: Option<String>,
    images: Option<Vec<String>>,
    targets: Spanned<Vec<Spanned<String>>>,
    at: Option<Spanned<TimeValue>>,
    cron: Option<Spanned<String>>,
    time_zone: Option<Spanned<String>>,
    start: Option<Spanned<TimeValue>>,
    until: Option<Spanned<TimeValue>>,
    misfire: Option<Misfire>,
    grace: Option<Spanned<String>>,
    overrides: Option<BTreeMap<String, RawOverride>>,
    approval: Option<Spanned<super::super::ApprovalMode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    title: Option<String>,
    body: Option<String>,
    link: Option<String>,
    images: Option<Vec<String>>,
}

impl Loader {
    pub(super) fn raw_post(&mut self, idx: usize, table: Table) {
        let span = table.span().unwrap_or(0..0);
        let mut override_spans = BTreeMap::new();
        if let Some(overrides) = table.get("overrides").and_then(Item::as_table_like) {
            for (name, item) in overrides.iter() {
                let at = overrides.key(name).and_then(|k| k.span()).or_else(|| item.span()).unwrap_or(span.clone());
                override_spans.insert(name.to_string(), at);
            }
        }
        match from_item::<RawPost>(Item::Table(table)) {
            Ok(raw) => self.raw_posts.push(PostDef { raw, file: idx, span, override_spans }),
            Err(e) => self.de_error(idx, Some(span), "in [[posts]]", &e),
        }
    }

    pub(super) fn posts(&mut self, default_tz: Tz, groups: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Post> {
        let mut posts: BTreeMap<String, Post> = BTreeMap::new();
        let mut defined_at: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
        for PostDef { raw, file: idx, span, override_spans } in std::mem::take(&mut self.raw_posts) {
            let id = raw.id.get_ref().clone();
            if let Some((other_idx, other_span)) = defined_at.get(&id) {
                let other = &self.files[*other_idx];
                let (line, _) = other.line_col(other_span.start);
                let msg = format!(
                    "post id `{id}` is already used at {}:{line}; post ids must be unique",
                    other.path.display()
                );
                self.diags.error(&self.files[idx], span_of(&raw.id), msg);
                continue;
            }
            defined_at.insert(id.clone(), (idx, span.clone()));
            if let Some(post) = self.post(raw, idx, span, override_spans, default_tz, groups) {
                posts.insert(id, post);
            }
        }
        posts
    }

    fn post(
        &mut self,
        raw: RawPost,
        idx: usize,
        span: Range<usize>,
        override_spans: BTreeMap<String, Range<usize>>,
        default_tz: Tz,
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Option<Post> {
        let id = raw.id.get_ref().clone();
        let file = &self.files[idx];
        let dir = file.dir().to_path_buf();
        let mark = self.mark();
        if !valid_id(&id) {
            self.diags.error(file, span_of(&raw.id), format!("post id `{id}` {ID_RULE}"));
        }
        let tz = match &raw.time_zone {
            Some(tz) => match parse_tz(tz.get_ref()) {
                Ok(tz) => tz,
                Err(msg) => {
                    self.diags.error(file, span_of(tz), msg);
                    return None;
                }
            },
            None => default_tz,
        };
        let resolve = |value: &Option<Spanned<TimeValue>>, diags: &mut Diagnostics| {
            let v = value.as_ref()?;
            match v.get_ref().resolve(&tz) {
                Ok(t) => Some(t),
                Err(msg) => {
                    diags.error(file, span_of(v), msg);
                    None
                }
            }
        };
        let start = resolve(&raw.start, &mut self.diags);
        let until = resolve(&raw.until, &mut self.diags);
        let at = resolve(&raw.at, &mut self.diags);
        // A wall-clock time in a zone nobody chose is read in UTC: 09:00 is 17:00 in Beijing.
        let local_at = raw.at.as_ref().filter(|v| matches!(v.get_ref(), TimeValue::Local(_)));
        if raw.time_zone.is_none() && !self.zone_chosen && (local_at.is_some() || raw.cron.is_some()) {
            let what = if local_at.is_some() { "`at` has no offset" } else { "`cron` runs on wall-clock time" };
            let msg = format!(
                "post `{id}`: {what} and neither the post nor [daemon] sets `time_zone`, so it is read in UTC; \
                 set `time_zone = \"Asia/Shanghai\"` (your zone) in [daemon] or in the post"
            );
            self.diags.warning(file, local_at.and_then(span_of).or_else(|| raw.cron.as_ref().and_then(span_of)), msg);
        }
        let recurrence = match (&raw.at, &raw.cron) {
            (Some(_), Some(cron)) => {
                self.diags.error(file, span_of(cron), format!("post `{id}` has both `at` and `cron`; give one"));
                return None;
            }
            (None, None) => {
                let msg = format!(
                    "post `{id}` has no schedule; add `at = 2026-12-01T09:00:00+08:00` (once) or `cron = \"0 9 * * 1\"` (recurring)"
                );
                self.diags.error(file, Some(span.clone()), msg);
                return None;
            }
            (Some(_), None) => {
                for (name, bound) in [("start", &raw.start), ("until", &raw.until)] {
                    if let Some(b) = bound {
                        let msg = format!("`{name}` applies to `cron` schedules; a post with `at` happens once");
                        self.diags.error(file, span_of(b), msg);
                    }
                }
                Recurrence::Once(at?)
            }
            (None, Some(cron)) => match CronExpr::parse(cron.get_ref()) {
                Ok(expr) => Recurrence::Cron(expr),
                Err(e) => {
                    // Point at the offending part: the string starts one byte after its quote.
                    let at = cron.span().start + 1 + byte_offset(cron.get_ref(), e.offset);
                    self.diags.error(file, Some(at..at), format!("bad cron expression `{}`: {e}", cron.get_ref()));
                    return None;
                }
            },
        };
        if let (Some(s), Some(u)) = (start, until)
            && u < s
        {
            self.diags.error(file, raw.until.as_ref().and_then(span_of), "`until` is before `start`");
        }
        let grace = match &raw.grace {
            None => Duration::from_secs(3600),
            Some(g) => match parse_duration(g.get_ref()) {
                Ok(d) => d,
                Err(msg) => {
                    self.diags.error(file, span_of(g), msg);
                    Duration::ZERO
                }
            },
        };
        let misfire = raw.misfire.unwrap_or_default();
        let approval = raw.approval.as_ref().map(|a| *a.get_ref());
        if let Some((default, has_group)) = self.approval_default
            && approval.unwrap_or(default) == super::super::ApprovalMode::Required
            && !has_group
        {
            let at = raw.approval.as_ref().and_then(span_of).or_else(|| span_of(&raw.id));
            self.diags.error(
                file,
                at,
                format!(
                    "post `{id}` needs approval, but no one may approve it: name the approvers' group in \
                     `[daemon] approvers_group`"
                ),
            );
        }
        let schedule = Schedule { recurrence, tz, start, until };

        // Targets.
        let mut targets = BTreeSet::new();
        if raw.targets.get_ref().is_empty() {
            self.diags.error(
                file,
                span_of(&raw.targets),
                format!("post `{id}` has no targets; name accounts or groups"),
            );
        }
        for target in raw.targets.get_ref() {
            let name = target.get_ref();
            if let Some((account, _, _)) = self.accounts.get(name) {
                targets.insert(account.id.clone());
            } else if let Some(members) = groups.get(name) {
                targets.extend(members.iter().cloned());
            } else if self.declared.contains(name) || self.groups.contains_key(name) {
                // The account or group itself has errors, reported there: the
                // config is refused without a second error here.
            } else {
                let mut msg = format!("target `{name}` is neither an account nor a group");
                if let Some(close) = closest(name, self.declared.iter().chain(self.groups.keys())) {
                    msg.push_str(&format!("; did you mean `{close}`?"));
                }
                self.diags.error(file, span_of(target), msg);
            }
        }

        // Content.
        let resolve_images =
            |images: Vec<String>| images.into_iter().map(|p| dir.join(p).to_string_lossy().into_owned()).collect();
        let content = PostContent {
            title: raw.title,
            body: raw.body.unwrap_or_default(),
            link: raw.link,
            images: resolve_images(raw.images.unwrap_or_default()),
        };
        let mut overrides = BTreeMap::new();
        for (name, o) in raw.overrides.unwrap_or_default() {
            match Platform::parse(&name) {
                Some(p) => {
                    let images = o.images.map(resolve_images);
                    overrides.insert(p, ContentOverride { title: o.title, body: o.body, link: o.link, images });
                }
                None => {
                    let names: Vec<_> = Platform::ALL.iter().map(|p| p.name()).collect();
                    let msg = format!("`overrides.{name}`: unknown platform; expected one of {}", names.join(", "));
                    self.diags.error(file, override_spans.get(&name).cloned(), msg);
                }
            }
        }
        let (line, _) = file.line_col(span.start);
        let mut post = Post {
            id: id.clone(),
            content,
            overrides,
            targets: self
                .target_lists
                .entry(targets.into_iter().collect())
                .or_insert_with_key(|l| l.clone().into())
                .clone(),
            schedule,
            misfire,
            grace,
            approval,
            file: file.path.clone(),
            line,
            hash: String::new(),
        };
        post.compute_hash();

        // What no platform may receive: control characters, bidi overrides, script links.
        let mut hostile: Vec<(String, herald_adapters::ContentProblem)> =
            herald_adapters::content::hostile_content(&post.content).into_iter().map(|p| (String::new(), p)).collect();
        for (platform, o) in &post.overrides {
            let only = PostContent {
                title: o.title.clone(),
                body: o.body.clone().unwrap_or_default(),
                link: o.link.clone(),
                images: Vec::new(),
            };
            let context = format!(" (overrides.{platform})");
            hostile.extend(herald_adapters::content::hostile_content(&only).into_iter().map(|p| (context.clone(), p)));
        }
        for (context, problem) in hostile {
            self.diags.error(file, Some(span.clone()), format!("post `{id}`{context}: {problem}"));
        }

        // What each platform would say of the content.
        let mut refused: BTreeMap<(Platform, String), Vec<String>> = BTreeMap::new();
        let mut contents: BTreeMap<Platform, PostContent> = BTreeMap::new();
        for account_id in &post.targets {
            let Some((account, _, _)) = self.accounts.get(account_id) else { continue };
            let content = contents.entry(account.platform).or_insert_with(|| post.content_for(account.platform));
            if let Err(problems) = account.adapter.render(content) {
                for p in problems {
                    refused.entry((account.platform, p.to_string())).or_default().push(account_id.clone());
                }
            }
        }
        for ((platform, problem), accounts) in refused {
            let msg = format!("post `{id}` would be refused by {platform} ({}): {problem}", list_accounts(&accounts));
            self.diags.error(file, Some(span.clone()), msg);
        }

        // A one-shot `at` already past: `check` says what will become of it
        // (it reads the store), the daemon when it settles it.
        if post.schedule.next_after(self.now).is_none() && post.schedule.is_recurring() {
            let msg = format!("post `{id}`: the schedule has no occurrence after now (check `until`)");
            self.diags.warning(file, Some(span.clone()), msg);
        }
        self.valid_since(mark).then_some(post)
    }
}

fn byte_offset(text: &str, char_offset: usize) -> usize {
    text.char_indices().nth(char_offset).map_or(text.len(), |(i, _)| i)
}

fn list_accounts(accounts: &[String]) -> String {
    match accounts.len() {
        0..=3 => accounts.join(", "),
        n => format!("{}, and {} more", accounts[..3].join(", "), n - 3),
    }
}
