// promrules checks Prometheus rule files as Prometheus itself loads them (the core of `promtool check rules`,
// without the rest of Prometheus): the YAML's shape and fields, every expression parsed by the PromQL parser,
// every label and annotation template parsed. For each rule it prints one JSON line: the group, the alert (or
// recorded series), the expression as Prometheus formats it, the series it selects and the labels it matches,
// groups by or compares on, for tests to hold against the metrics the code exposes. It exits 1 on any error.
//
// Usage: promrules FILE...
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type selector struct {
	Metric string   `json:"metric"`
	Labels []string `json:"labels"` // the label names it matches on, besides __name__
}

type rule struct {
	File     string            `json:"file"`
	Group    string            `json:"group"`
	Alert    string            `json:"alert,omitempty"`
	Record   string            `json:"record,omitempty"`
	Expr     string            `json:"expr"`
	For      string            `json:"for,omitempty"`
	Labels   map[string]string `json:"labels"`
	Notes    map[string]string `json:"annotations"`
	Selects  []selector        `json:"selects"`
	Grouping []string          `json:"grouping"` // labels named in by(...), without(...), on(...), ignoring(...)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: promrules FILE...")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	p := parser.NewParser(parser.Options{})
	out := json.NewEncoder(os.Stdout)
	failed := false
	for _, path := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, p, logger)
		for _, err := range errs {
			fmt.Fprintln(os.Stderr, err)
			failed = true
		}
		if groups == nil {
			continue
		}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				expr, err := p.ParseExpr(r.Expr)
				if err != nil { // rulefmt reported it already
					continue
				}
				found := rule{File: path, Group: g.Name, Alert: r.Alert, Record: r.Record, Expr: expr.String(),
					Labels: r.Labels, Notes: r.Annotations, Selects: []selector{}, Grouping: []string{}}
				if r.For != 0 {
					found.For = r.For.String()
				}
				parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
					switch n := node.(type) {
					case *parser.VectorSelector:
						s := selector{Metric: n.Name, Labels: []string{}}
						for _, m := range n.LabelMatchers {
							if m.Name != model.MetricNameLabel {
								s.Labels = append(s.Labels, m.Name)
							}
						}
						sort.Strings(s.Labels)
						found.Selects = append(found.Selects, s)
					case *parser.AggregateExpr:
						found.Grouping = append(found.Grouping, n.Grouping...)
					case *parser.BinaryExpr:
						if n.VectorMatching != nil {
							found.Grouping = append(found.Grouping, n.VectorMatching.MatchingLabels...)
						}
					}
					return nil
				})
				if err := out.Encode(found); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}
