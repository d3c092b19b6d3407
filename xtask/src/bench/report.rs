//! The results as a markdown report (what the README's "Benchmarks" section shows).
use std::fmt::Write as _;

use serde_json::Value;

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

fn summary(v: &Value, digits: usize) -> String {
    if v.is_null() {
        return "–".into();
    }
    format!(
        "{} [{}–{}]",
        num(&v["median"], digits),
        num(&v["min"], digits),
        num(&v["max"], digits)
    )
}

fn ratio(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "–".into(), |x| format!("{x:.3}×"))
}

fn rate(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 1e6 => format!("{:.2} M", x / 1e6),
        Some(x) if x >= 1e3 => format!("{:.0} k", x / 1e3),
        Some(x) => format!("{x:.0}"),
        None => "–".into(),
    }
}

#[expect(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "one report written top to bottom, section by section"
)]
pub(crate) fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    let o = &r["overhead"];
    let _ = writeln!(
        s,
        "Run: `{}` on {}; Linux {}, {} ({} cores), load average at start {}; took {:.0} s.\n",
        r["command"].as_str().unwrap_or_default(),
        m["date"].as_str().unwrap_or_default(),
        m["kernel"].as_str().unwrap_or_default(),
        m["cpu"].as_str().unwrap_or_default(),
        m["cores"],
        m["load_at_start"].as_str().unwrap_or_default(),
        r["duration_s"].as_f64().unwrap_or(0.0),
    );
    if o.is_null() {
        // `--enforcement`: that section only.
        s.push_str(&enforcement(&r["enforcement"]));
        return s;
    }
    let sizes = &o["sizes"];
    let _ = writeln!(
        s,
        "**Kernel-path overhead** — {} repetitions per condition, interleaved; median [min–max]; \
         × = median over the no-tracer median; paired = median [min–max] of each repetition over \
         the no-tracer run of the same repetition. CPU = user+sys of the workload (`wait4`).\n",
        sizes["repetitions"]
    );
    s.push_str(
        "| workload | condition | wall s | wall × | wall × paired | CPU s | CPU × | CPU × paired | agentid completeness |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for w in o["workloads"].as_array().into_iter().flatten() {
        for c in w["conditions"].as_array().into_iter().flatten() {
            let completeness = if c["completeness"].is_null() {
                String::new()
            } else {
                let r = &c["completeness"]["ratio"];
                format!(
                    "{:.2}% [{:.2}–{:.2}]",
                    r["median"].as_f64().unwrap_or(0.0) * 100.0,
                    r["min"].as_f64().unwrap_or(0.0) * 100.0,
                    r["max"].as_f64().unwrap_or(0.0) * 100.0
                )
            };
            if let Some(why) = c["unavailable"].as_str() {
                let _ = writeln!(
                    s,
                    "| {} | {} | could not run: {} | | | | | | |",
                    w["workload"].as_str().unwrap_or_default(),
                    c["condition"].as_str().unwrap_or_default(),
                    why.replace('|', "/").replace('\n', " ")
                );
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w["workload"].as_str().unwrap_or_default(),
                c["condition"].as_str().unwrap_or_default(),
                summary(&c["wall_s"], 3),
                ratio(&c["wall_ratio"]),
                summary(&c["wall_ratio_paired"], 3),
                summary(&c["cpu_s"], 3),
                ratio(&c["cpu_ratio"]),
                summary(&c["cpu_ratio_paired"], 3),
                completeness
            );
        }
    }
    let _ = writeln!(
        s,
        "\nSizes: connect storm {} loopback connect/close cycles; exec storm {} fork+exec of \
         `/bin/true` (also with 24 KiB more environment, past the exec record's own 4 KiB, so \
         each exec sends chunk records too); mixed {} rounds of (exec `/bin/true` or `/bin/echo`, 4 connects, 4 UDP \
         sends). agentid ring-buffer drops over all runs: {}; store queue drops: {}.\n",
        sizes["connects"],
        sizes["execs"],
        sizes["mixed_rounds"],
        o["agentid_kernel_drops"],
        o["agentid_store_drops"]
    );
    for w in o["workloads"].as_array().into_iter().flatten() {
        let c = w["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["condition"] == "agentid"));
        if let Some(d) = c.map(|c| &c["daemon_cpu_s"]).filter(|d| !d.is_null()) {
            let _ = writeln!(
                s,
                "- agentid daemon CPU during the {}: {} s per run",
                w["workload"].as_str().unwrap_or_default(),
                summary(d, 3)
            );
        }
    }
    s.push('\n');
    for f in o["start_failures"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "- {} failed to start in repetition {} (fewer samples): {}\n",
            f["condition"].as_str().unwrap_or_default(),
            f["rep"],
            f["error"].as_str().unwrap_or_default()
        );
    }

    if r["pipeline"].is_null() {
        // `--overhead`: that section only.
        return s;
    }
    let p = &r["pipeline"];
    s.push_str("**Userspace** (criterion, one thread; mean [95% interval])\n\n");
    s.push_str("| path | events/s |\n|---|---|\n");
    for (key, label) in [
        (
            "pipeline",
            "decode → credential scan → process table → attribution → detection",
        ),
        (
            "store_writer",
            "store writer (`Store::writer`, batched SQLite)",
        ),
    ] {
        let v = &p[key];
        let _ = writeln!(
            s,
            "| {label} | {} [{}–{}] |",
            rate(&v["events_per_s"]),
            rate(&v["events_per_s_low"]),
            rate(&v["events_per_s_high"])
        );
    }

    let d = &r["resources"];
    let _ = writeln!(
        s,
        "\n**Daemon resources** — {} s at a target of {} events/s\n",
        d["seconds"], d["target_events_per_s"]
    );
    s.push_str("| live processes in table | events/s achieved | daemon CPU | RSS under load (max sampled) | VmHWM (incl. start-up BTF parse) | ring-buffer drops | store drops |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    let _ = writeln!(
        s,
        "| {} | {} | {}% of one core | {} MiB | {} MiB | {} | {} |",
        d["live_processes_in_table"],
        num(&d["events_per_s"], 0),
        num(&d["daemon_cpu_percent"], 1),
        num(&d["max_rss_under_load_mib"], 1),
        num(&d["peak_rss_mib"], 1),
        d["kernel_drops"],
        d["store_drops"]
    );
    s.push_str(&disk_and_memory(d));

    let a = &r["alert_latency"];
    s.push_str("\n**Alert latency** — credential-reuse exec → line in the alerts file\n\n");
    s.push_str(&latency_table(a));
    tls_markdown(&mut s, &r["tls"]);
    s.push('\n');
    s.push_str(&enforcement(&r["enforcement"]));
    if !r["fleet"].is_null() {
        s.push_str(&fleet_markdown(&r["fleet"]));
    }
    if !r["scale"].is_null() {
        s.push('\n');
        s.push_str(&scale_markdown(&r["scale"]));
    }
    s
}

/// A latency run as a table: trials, p50, p99, min–max.
fn latency_table(a: &Value) -> String {
    format!(
        "| trials | p50 | p99 | min–max |\n|---|---|---|---|\n| {} | {} ms | {} ms | {}–{} ms |\n",
        a["trials"],
        num(&a["p50_ms"], 1),
        num(&a["p99_ms"], 1),
        num(&a["spread_ms"]["min"], 1),
        num(&a["spread_ms"]["max"], 1)
    )
}

/// The fleet section: publish throughput, cross-host alert latency, CPU on vs off.
pub(crate) fn fleet_markdown(fleet: &Value) -> String {
    let mut s = String::new();
    let publish = &fleet["publish"];
    let _ = writeln!(
        s,
        "\n**Fleet** ({}) — publish throughput: {} sightings/s ({} through the link's spool, \
         each acknowledged, in {} s)\n",
        fleet["cluster"].as_str().unwrap_or_default(),
        num(&publish["per_s"], 0),
        publish["records"],
        num(&publish["seconds"], 1)
    );
    s.push_str("Cross-host alert latency — exec on host 2 → the fleet alert line\n\n");
    s.push_str(&latency_table(&fleet["cross_host_alert_latency"]));
    s.push_str("\n| fleet | events/s | daemon CPU | max RSS |\n|---|---|---|---|\n");
    for (label, key) in [("off", "cpu_fleet_off"), ("on", "cpu_fleet_on")] {
        let cpu = &fleet[key];
        let _ = writeln!(
            s,
            "| {label} | {} | {}% | {} MiB |",
            num(&cpu["events_per_s"], 0),
            num(&cpu["daemon_cpu_percent"], 1),
            num(&cpu["max_rss_under_load_mib"], 1)
        );
    }
    s
}

/// The enforcement section: the connect storm by condition, enforcement's cost over
/// monitor mode, and resolve+connect cycles a second.
fn enforcement(e: &Value) -> String {
    let mut s = String::new();
    if e.is_null() {
        return s;
    }
    let sizes = &e["sizes"];
    let _ = writeln!(
        s,
        "**Enforcement** — {} repetitions × {} runs per condition; with the daemon up, enforced \
         and monitor runs alternate. Connect storm: {} cycles; resolve+connect: {} cycles of \
         `getaddrinfo` through dnsmasq (TTL 1 s, no hold) then connect. Median [min–max].\n",
        sizes["repetitions"],
        sizes["pairs_per_repetition"],
        sizes["connects"],
        sizes["resolve_cycles"]
    );
    s.push_str("| condition | storm wall s | storm CPU s | CPU over no tracer | BPF ns per connect (connect4 ns/call) | resolve+connect cycles/s | refused |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    let storm = e["connect_storm"].as_array().cloned().unwrap_or_default();
    let resolve = e["resolve_connect"].as_array().cloned().unwrap_or_default();
    for (c, r) in storm.iter().zip(&resolve) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} % | {} ({}) | {} | {} |",
            c["condition"].as_str().unwrap_or_default(),
            summary(&c["wall_s"], 3),
            summary(&c["cpu_s"], 3),
            num(&c["cpu_over_no_tracer_pct"], 1),
            num(&c["bpf_ns_per_connect"], 0),
            num(&c["connect4_ns_per_call"], 0),
            summary(&r["cycles_per_s"], 0),
            r["refused"]
        );
    }
    let _ = writeln!(
        s,
        "\nEnforced minus monitor, paired runs, in points of the no-tracer storm CPU: {} \
         (whole workload CPU); {} (the kernel's run time of agentid's socket-path programs, \
         BPF statistics).",
        summary(&e["enforced_minus_monitor_cpu_pp"], 2),
        summary(&e["enforced_minus_monitor_bpf_pp"], 3)
    );
    s
}

/// `--tls`: the TLS section alone.
pub(crate) fn tls_only(r: &Value) -> String {
    let mut s = String::new();
    tls_markdown(&mut s, &r["tls"]);
    s
}

/// The TLS client-overhead section (the request uprobes).
fn tls_markdown(s: &mut String, t: &Value) {
    if t.is_null() {
        return;
    }
    let _ = writeln!(
        s,
        "\n**TLS client overhead** — {} keep-alive HTTPS requests per loop, {} repetitions, \
         interleaved; client CPU s, median [min–max]\n",
        t["requests_per_loop"], t["reps"]
    );
    s.push_str("| client | condition | CPU s | × no tracer | µs added per request |\n|---|---|---|---|---|\n");
    for (key, label) in [
        ("python_http_client", "Python http.client (SSL_write_ex)"),
        ("curl_http1", "curl --http1.1 (SSL_write)"),
    ] {
        for (cond, v) in t[key].as_object().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {label} | {cond} | {} | {} | {} |",
                summary(&v["cpu_s"], 3),
                ratio(&v["ratio"]),
                num(&v["extra_us_per_request"], 1)
            );
        }
    }
    for (p, v) in t["program_ns_per_call"].as_object().into_iter().flatten() {
        let _ = writeln!(
            s,
            "\nBPF program `{p}`: {} ns per call (`bpf_stats`, registered client).",
            summary(v, 0)
        );
    }
    let _ = writeln!(
        s,
        "\n`request` events per registered run (2 × {} expected): {}",
        t["requests_per_loop"], t["request_events_per_registered_run"]
    );
}

/// Bytes on disk per event and where the memory goes, from the daemon's `status` after
/// the resources run.
fn disk_and_memory(d: &Value) -> String {
    let m = &d["memory"];
    let mib = |v: &Value| v.as_u64().unwrap_or(0) >> 20;
    let kib = |v: &Value| v.as_u64().unwrap_or(0) >> 10;
    format!(
        "\n| store B/event | audit B/record (`audit.log` plain, archives compressed) | ring buffer | ring peak backlog | process table | per live process |\n\
         |---|---|---|---|---|---|\n\
         | {} | {} | {} MiB | {} KiB | {} KiB | {} B |\n",
        d["store_bytes_per_event"],
        d["audit_bytes_per_record"],
        mib(&m["ring_bytes"]),
        kib(&m["ring_peak_bytes"]),
        kib(&m["table_bytes"]),
        m["table_bytes_per_live"]
    )
}

/// The `--profile` result: daemon resources and where its time per event went.
pub(crate) fn profile_markdown(r: &Value) -> String {
    let mut s = String::new();
    let res = &r["resources"];
    let p = &res["profile"];
    let _ = writeln!(
        s,
        "Daemon at {:.0} events/s with {} live processes: {:.1}% of one core, {:.2} µs per event; \
         max RSS under load {:.1} MiB.\n",
        res["events_per_s"].as_f64().unwrap_or(0.0),
        res["live_processes_in_table"],
        res["daemon_cpu_percent"].as_f64().unwrap_or(0.0),
        p["daemon_us_per_event"].as_f64().unwrap_or(0.0),
        res["max_rss_under_load_mib"].as_f64().unwrap_or(0.0),
    );
    s.push_str(&disk_and_memory(res));
    s.push_str("\n| mapping | RSS MiB |\n|---|---|\n");
    for m in res["rss_by_mapping_mib"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| `{}` | {:.1} |",
            m["mapping"].as_str().unwrap_or_default(),
            m["mib"].as_f64().unwrap_or(0.0)
        );
    }
    s.push_str("\n| thread | share of daemon CPU | µs per event |\n|---|---|---|\n");
    for t in p["threads"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {:.1}% | {:.2} |",
            t["thread"].as_str().unwrap_or_default(),
            t["share_percent"].as_f64().unwrap_or(0.0),
            t["us_per_event"].as_f64().unwrap_or(0.0)
        );
    }
    s.push_str(
        "\n| event-loop stage (inclusive) | share of daemon CPU | µs per event |\n|---|---|---|\n",
    );
    for t in p["stages"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {:.1}% | {:.2} |",
            t["stage"].as_str().unwrap_or_default(),
            t["share_percent"].as_f64().unwrap_or(0.0),
            t["us_per_event"].as_f64().unwrap_or(0.0)
        );
    }
    s.push_str("\n| top functions (self) | share |\n|---|---|\n");
    for t in p["top_self"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| `{}` | {:.1}% |",
            t["symbol"].as_str().unwrap_or_default(),
            t["self_percent"].as_f64().unwrap_or(0.0)
        );
    }
    s
}

/// The scale curve: the daemon's CPU and RSS by rate and by live processes, and the
/// zero-drop search.
pub(crate) fn scale_markdown(sc: &Value) -> String {
    let mut s = String::new();
    let row = |s: &mut String, p: &Value| {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}% | {} | {}% | {} µs | {} MiB | {} KiB | {} B | {} |",
            p["live_processes_in_table"],
            rate(&p["target_events_per_s"]),
            num(&p["generated_per_s"], 0),
            num(&p["generator_cpu_percent"], 0),
            num(&p["events_per_s"], 0),
            num(&p["daemon_cpu_percent"], 1),
            num(&p["daemon_us_per_event"], 1),
            num(&p["max_rss_under_load_mib"], 1),
            p["ring_peak_kib"],
            p["table_bytes_per_live"],
            p["kernel_drops"],
        );
    };
    let head = "| live processes | target | generated/s | generator CPU (one core) | daemon events/s | daemon CPU (one core) | µs per event | max RSS under load | ring peak | table per live process | ring drops |\n\
                |---|---|---|---|---|---|---|---|---|---|---|\n";
    let _ = writeln!(
        s,
        "**Scale curve** — {} s per point, each on a fresh daemon\n\nBy rate ({} live processes):\n",
        sc["seconds"], sc["rate_live_processes"]
    );
    s.push_str(head);
    for p in sc["by_rate"].as_array().into_iter().flatten() {
        row(&mut s, p);
    }
    let _ = writeln!(
        s,
        "\nBy live processes ({} events/s target):\n",
        sc["process_rate"]
    );
    s.push_str(head);
    for p in sc["by_processes"].as_array().into_iter().flatten() {
        row(&mut s, p);
    }
    let z = &sc["zero_drop_search"];
    let _ = writeln!(s, "\nZero-drop search ({} s per step):\n", z["seconds"]);
    s.push_str(head);
    for p in z["steps"].as_array().into_iter().flatten() {
        row(&mut s, p);
    }
    let reached = |p: &Value| {
        if p.is_null() {
            "none".to_owned()
        } else {
            format!("{} events/s", num(&p["events_per_s"], 0))
        }
    };
    let _ = writeln!(
        s,
        "\nHighest rate with zero ring-buffer drops: {}; first with drops: {}.",
        reached(&z["highest_zero_drop"]),
        reached(&z["first_with_drops"])
    );
    s
}
