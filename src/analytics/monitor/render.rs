//! The report as text (`vaxpulse monitor`) and as the drift chart's data.

use super::*;

impl MonitorReport {
    pub fn render(&self) -> String {
        let c = &self.champion;
        let labels: Vec<String> = c
            .windows
            .iter()
            .flat_map(|w| w.shares.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut header = vec!["window", "tweets"];
        header.extend(labels.iter().map(String::as_str));
        header.extend(["mean conf.", "PSI labels", "PSI conf.", "level"]);
        let mut t = Table::new(&header);
        for w in &c.windows {
            let mut row = vec![w.window.clone(), w.tweets.to_string()];
            row.extend(
                labels
                    .iter()
                    .map(|l| format!("{:.3}", w.shares.get(l).copied().unwrap_or(0.0))),
            );
            row.push(format!("{:.3}", w.mean_confidence));
            row.push(format!("{:.4}", w.psi));
            row.push(format!("{:.4}", w.confidence_psi));
            row.push(w.level.into());
            t.row(row);
        }
        let mut out = format!(
            "## monitor: champion per {} vs reference {} ({} tweets); PSI watch ≥ {PSI_WATCH}, alert ≥ {PSI_ALERT}\n\n{}",
            self.period,
            c.reference,
            c.reference_tweets,
            t.render()
        );
        if !self.versions.is_empty() {
            let mut t = Table::new(&[
                "version",
                "reference tweets",
                "latest window",
                "tweets",
                "PSI labels",
                "PSI conf.",
                "level",
            ]);
            for v in &self.versions {
                if let Some(w) = v.latest() {
                    t.row(vec![
                        v.series.clone(),
                        v.reference_tweets.to_string(),
                        w.window.clone(),
                        w.tweets.to_string(),
                        format!("{:.4}", w.psi),
                        format!("{:.4}", w.confidence_psi),
                        w.level.into(),
                    ]);
                } else {
                    t.row(vec![
                        v.series.clone(),
                        v.reference_tweets.to_string(),
                        "(reference only)".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        "ok".into(),
                    ]);
                }
            }
            out.push_str("\n### each version against its own first days\n\n");
            out.push_str(&t.render());
        }
        let latest = self.latest_agreement();
        if !latest.is_empty() {
            let mut t = Table::new(&["window", "shadow", "tweets", "agreement", "kappa"]);
            for a in latest {
                t.row(vec![
                    a.window.clone(),
                    a.shadow.clone(),
                    a.tweets.to_string(),
                    format!("{:.4}", a.agreement),
                    format!("{:.4}", a.kappa),
                ]);
            }
            out.push_str("\n### champion vs shadows, latest window\n\n");
            out.push_str(&t.render());
            let mut t = Table::new(&["shadow", "champion label", "shadow label", "tweets"]);
            for (s, cl, sl, n) in self.flips.iter().filter(|f| f.1 != f.2) {
                t.row(vec![s.clone(), cl.clone(), sl.clone(), n.to_string()]);
            }
            if !t.rows.is_empty() {
                out.push_str("\n### label flips, latest window\n\n");
                out.push_str(&t.render());
            }
        }
        if !self.probes.is_empty() {
            let mut t = Table::new(&[
                "version",
                "device",
                "replicas",
                "latest run",
                "max |Δp| vs first/previous run",
                "flag",
            ]);
            for p in &self.probes {
                t.row(vec![
                    p.model.clone(),
                    p.device.clone(),
                    p.replicas.to_string(),
                    p.at.clone(),
                    format!("{:.2e}", p.max_deviation),
                    if p.flagged { "alert" } else { "ok" }.into(),
                ]);
            }
            out.push_str(&format!(
                "\n### probe set, runs of the last {PROBE_WINDOW_HOURS} h\n\n"
            ));
            out.push_str(&t.render());
        }
        if !self.input.is_empty() {
            let descriptors: Vec<&str> = self
                .input
                .iter()
                .map(|d| d.descriptor.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut header = vec!["window"];
            header.extend(descriptors.iter().copied());
            let mut t = Table::new(&header);
            let windows: Vec<&str> = self
                .input
                .iter()
                .map(|d| d.window.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for w in windows {
                let mut row = vec![w.to_string()];
                for d in &descriptors {
                    row.push(
                        self.input
                            .iter()
                            .find(|x| x.window == w && x.descriptor == *d)
                            .map_or("-".into(), |x| format!("{:.4} {}", x.psi, x.level)),
                    );
                }
                t.row(row);
            }
            out.push_str(&format!(
                "\n### input drift: PSI of the tweets' text descriptors vs the reference (length in 40-character buckets; share with a link, a mention, a hashtag)\n\n{}",
                t.render()
            ));
        }
        out.push_str(&format!("\nstatus: {}\n", self.worst()));
        out
    }

    /// The drift chart's data: champion PSI (labels, confidence) and agreement per shadow.
    pub fn drift_chart(&self) -> crate::analytics::chart::Drift {
        let windows: Vec<String> = self
            .champion
            .windows
            .iter()
            .map(|w| w.window.clone())
            .chain(self.agreement.iter().map(|a| a.window.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let at = |w: &str| windows.iter().position(|x| x == w);
        let mut labels = vec![None; windows.len()];
        let mut conf = vec![None; windows.len()];
        for w in &self.champion.windows {
            if let Some(i) = at(&w.window) {
                labels[i] = Some(w.psi);
                conf[i] = Some(w.confidence_psi);
            }
        }
        let mut shadows: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        for a in &self.agreement {
            if let Some(i) = at(&a.window) {
                shadows
                    .entry(a.shadow.clone())
                    .or_insert_with(|| vec![None; windows.len()])[i] = Some(a.agreement);
            }
        }
        crate::analytics::chart::Drift {
            title: format!(
                "Champion drift per {} (reference {}) and agreement with shadows",
                self.period, self.champion.reference
            ),
            windows,
            psi: vec![
                crate::analytics::chart::Line {
                    name: "PSI of labels".into(),
                    values: labels,
                },
                crate::analytics::chart::Line {
                    name: "PSI of confidence".into(),
                    values: conf,
                },
            ],
            agreement: shadows
                .into_iter()
                .map(|(name, values)| crate::analytics::chart::Line {
                    name: format!("agreement {name}"),
                    values,
                })
                .collect(),
            watch: PSI_WATCH,
            alert: PSI_ALERT,
        }
    }
}
