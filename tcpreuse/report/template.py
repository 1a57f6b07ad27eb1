"""The HTML page (Jinja2, autoescaped). One file, no scripts, no external resources:
it opens offline from a mail attachment or a ticket. Plots and the topology arrive as
inline SVG (Markup); everything else is escaped."""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="tcpreuse {{ version }}">
<title>{{ page.title }}</title>
<style>
:root { --bad: #b3261e; --warn: #a15c00; --good: #1e6b35; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d1d1d;
       background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0; }
.sub { color: var(--muted); margin: 0 0 14px; }
.verdict { padding: 12px 16px; border-radius: 8px; font-size: 15px; margin: 12px 0; border-left: 6px solid; }
.verdict.bad { background: #fbeaea; border-color: var(--bad); }
.verdict.warn { background: #fdf3e2; border-color: var(--warn); }
.verdict.good { background: #e9f5ec; border-color: var(--good); }
.verdict .lines { margin: 4px 0 0; padding-left: 18px; }
.finding { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 12px 0; }
.finding.critical { border-left: 6px solid var(--bad); }
.finding.warning { border-left: 6px solid var(--warn); }
.finding.info { border-left: 6px solid #3b6ea5; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; text-transform: uppercase; padding: 1px 7px;
         border-radius: 10px; color: #fff; margin-right: 6px; vertical-align: 2px; }
.badge.critical { background: var(--bad); } .badge.warning { background: var(--warn); } .badge.info { background: #3b6ea5; }
.conf { color: var(--muted); font-size: 12px; margin-left: 6px; }
.cause { margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; border-bottom: 1px solid #eee; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.fix { margin: 8px 0 0; padding: 8px 10px; background: #f6f8fa; border-radius: 6px; }
.fix code, .cmd { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.cmd { display: block; white-space: pre-wrap; margin: 2px 0; color: #0b5d1e; }
.effect { font-size: 13px; margin-top: 3px; }
.effect .after-good { color: var(--good); font-weight: 600; } .effect .after-bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 14px 0; padding: 10px 12px; }
figure h3 { margin-bottom: 6px; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
svg.plot-svg { width: 100%; height: auto; display: block; }
.topology-wrap { overflow-x: auto; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
</style>
</head>
<body>
<main>
<h1>{{ page.title }}</h1>
<p class="sub">{{ page.subtitle }}</p>

<section id="verdict">
<div class="verdict {{ page.verdict_level }}"><strong>{{ page.verdict }}</strong>
{% if page.verdict_lines %}<ul class="lines">{% for l in page.verdict_lines %}<li>{{ l }}</li>{% endfor %}</ul>{% endif %}
</div>
</section>

{% if page.findings is not none %}
<section id="findings">
<h2>Findings</h2>
{% if not page.findings %}<p class="muted">No problem found.</p>{% endif %}
{% for f in page.findings %}
<div class="finding {{ f.severity }}" data-finding="{{ f.id }}">
<h3><span class="badge {{ f.severity }}">{{ f.severity }}</span>{{ f.title }}<span class="conf">confidence {{ "%.0f"|format(f.confidence * 100) }} %{% if f.hosts %} · {{ f.hosts|join(", ") }}{% endif %}</span></h3>
<p class="cause">{{ f.cause }}</p>
{% if f.evidence %}<table class="evidence">{% for e in f.evidence %}
<tr><th>{{ e.label }}</th><td>{{ e.value|num }}</td><td class="muted">{{ e.detail }}</td></tr>{% endfor %}
</table>{% endif %}
{% for fx in f.fixes %}
<div class="fix"><strong>Fix: {{ fx.title }}</strong>
{% for c in fx.commands %}<span class="cmd">$ {{ c }}</span>{% endfor %}
{% if fx.set %}<div class="muted">simulate with: <code>{% for k, v in fx.set.items() %}--set {{ k }}={{ v }} {% endfor %}</code></div>{% endif %}
{% if fx.effect %}{% set e = fx.effect %}<div class="effect">
{% if e.note %}<span class="after-bad">could not be re-simulated: {{ e.note }}</span>{% else %}
re-simulated: failed {{ e.failure_rate_before|pct }} → <span class="{{ 'after-good' if e.failure_rate_after < e.failure_rate_before or e.failure_rate_after == 0 else 'after-bad' }}">{{ e.failure_rate_after|pct }}</span>,
delayed {{ e.delayed_rate_before|pct }} → {{ e.delayed_rate_after|pct }},
p99 connect {{ e.p99_connect_ms_before|ms }} → {{ e.p99_connect_ms_after|ms }}
{% endif %}</div>{% endif %}
{% if fx.caveat %}<div class="muted">note: {{ fx.caveat }}</div>{% endif %}
</div>
{% endfor %}
</div>
{% endfor %}
</section>
{% endif %}

{% if page.topology %}
<section id="topology">
<h2>Topology</h2>
<figure class="diagram"><div class="topology-wrap">{{ page.topology }}</div>
<figcaption>{{ page.topology_caption }}</figcaption></figure>
</section>
{% endif %}

{% if page.plots %}
<section id="plots">
<h2>Plots</h2>
{% for p in page.plots %}
<figure class="plot" data-plot="{{ p.key }}"><h3>{{ p.title }}</h3>{{ p.svg }}
{% if p.caption %}<figcaption>{{ p.caption }}</figcaption>{% endif %}</figure>
{% endfor %}
</section>
{% endif %}

{% for t in page.tables %}
<section class="table">
<h2>{{ t.title }}</h2>
{% if t.note %}<p class="muted">{{ t.note }}</p>{% endif %}
<table><thead><tr>{% for h in t.headers %}<th{% if loop.index0 in t.numeric %} class="num"{% endif %}>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for c in row %}<td{% if loop.index0 in t.numeric %} class="num"{% endif %}>{{ c|num }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
</section>
{% endfor %}

{% if page.notes %}
<section id="notes"><h2>Notes</h2><ul>{% for n in page.notes %}<li>{{ n }}</li>{% endfor %}</ul></section>
{% endif %}

{% if page.details %}
<section id="details"><h2>Details</h2>
{% for title, rows in page.details %}<details><summary>{{ title }}</summary><table>
{% for k, v in rows %}<tr><th>{{ k }}</th><td>{{ v|num }}</td></tr>{% endfor %}</table></details>{% endfor %}
</section>
{% endif %}

<footer>Made by tcpreuse {{ version }}{% if page.made_from %} from {{ page.made_from }}{% endif %}. Self-contained: no scripts, no network.</footer>
</main>
</body>
</html>
"""
