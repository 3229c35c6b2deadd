// promrules checks Prometheus rule files as Prometheus itself loads them (the core of `promtool check rules`,
// without the rest of Prometheus): the YAML's shape and fields, every expression parsed by the PromQL parser,
// every label and annotation template parsed. For each rule it prints one JSON line: the group, the alert (or
// recorded series), the expression as Prometheus formats it, the series it selects and the labels it matches,
// groups by or compares on, each aggregation, and the functions it calls on which series (for histogram_quantile,
// the labels its argument keeps), for tests to hold against the metrics the code exposes. It exits 1 on any error.
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

type call struct {
	Function string   `json:"function"`
	Series   []string `json:"series"`          // the series selected inside its arguments
	Keeps    []string `json:"keeps,omitempty"` // histogram_quantile: its argument's labels ("*": every one)
}

// aggregation is one aggregation operator: sum, max, … by (...) or without (...).
type aggregation struct {
	Op       string   `json:"op"`
	Grouping []string `json:"grouping"`
	Without  bool     `json:"without"`
}

// match is a binary operation's on(...): both sides must have those labels.
type match struct {
	Labels []string `json:"labels"`
	Left   []string `json:"left"` // the series selected on each side
	Right  []string `json:"right"`
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
	Calls    []call            `json:"calls"`
	Matches  []match           `json:"matches"`
	Aggs     []aggregation     `json:"aggregations"`
}

// seriesIn is the names of the series selected anywhere in node.
func seriesIn(node parser.Node) []string {
	names := []string{}
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if v, ok := n.(*parser.VectorSelector); ok {
			names = append(names, v.Name)
		}
		return nil
	})
	return names
}

// keeps is the labels the value of expr keeps: an aggregation's by(...) list, "*" for every one (no aggregation
// on top), nothing known for without(...).
func keeps(expr parser.Expr) []string {
	for {
		paren, ok := expr.(*parser.ParenExpr)
		if !ok {
			break
		}
		expr = paren.Expr
	}
	if agg, ok := expr.(*parser.AggregateExpr); ok {
		if agg.Without {
			return []string{}
		}
		return append([]string{}, agg.Grouping...)
	}
	return []string{"*"}
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
					Labels: r.Labels, Notes: r.Annotations, Selects: []selector{}, Grouping: []string{}, Calls: []call{},
					Matches: []match{}, Aggs: []aggregation{}}
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
						found.Aggs = append(found.Aggs, aggregation{Op: n.Op.String(),
							Grouping: append([]string{}, n.Grouping...), Without: n.Without})
					case *parser.BinaryExpr:
						if n.VectorMatching != nil {
							found.Grouping = append(found.Grouping, n.VectorMatching.MatchingLabels...)
							if n.VectorMatching.On {
								found.Matches = append(found.Matches, match{Labels: n.VectorMatching.MatchingLabels,
									Left: seriesIn(n.LHS), Right: seriesIn(n.RHS)})
							}
						}
					case *parser.Call:
						c := call{Function: n.Func.Name, Series: []string{}}
						for _, arg := range n.Args {
							c.Series = append(c.Series, seriesIn(arg)...)
						}
						if n.Func.Name == "histogram_quantile" && len(n.Args) == 2 {
							c.Keeps = keeps(n.Args[1])
						}
						found.Calls = append(found.Calls, c)
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
