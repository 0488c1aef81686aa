package observability

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

const prometheusRulePath = "prometheus/operator/prometheusrule.yaml"

// prometheusRule wraps the groups of prometheus/rules in one PrometheusRule
// for Prometheus Operator users.
func prometheusRule(t *testing.T) []byte {
	t.Helper()
	var groups []*yaml.Node
	for _, f := range ruleFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		root := doc.Content[0]
		for i := 0; i < len(root.Content); i += 2 {
			if root.Content[i].Value == "groups" {
				groups = append(groups, root.Content[i+1].Content...)
			}
		}
	}
	for _, g := range groups {
		clearComments(g)
	}
	str := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: s} }
	mapping := func(kv ...*yaml.Node) *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Content: kv} }
	doc := mapping(
		str("apiVersion"), str("monitoring.coreos.com/v1"),
		str("kind"), str("PrometheusRule"),
		str("metadata"), mapping(str("name"), str("ambit"), str("namespace"), str("ambit-system"),
			str("labels"), mapping(str("app.kubernetes.io/name"), str("ambit"))),
		str("spec"), mapping(str("groups"), &yaml.Node{Kind: yaml.SequenceNode, Content: groups}),
	)
	var b bytes.Buffer
	b.WriteString("# Generated from ../rules/*.yaml by deploy/observability's tests: do not edit.\n" +
		"# Regenerate: go test ./deploy/observability -run TestPrometheusRuleUpToDate -update\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func clearComments(n *yaml.Node) {
	n.HeadComment, n.LineComment, n.FootComment = "", "", ""
	for _, c := range n.Content {
		clearComments(c)
	}
}

// The PrometheusRule holds exactly the rules of prometheus/rules.
func TestPrometheusRuleUpToDate(t *testing.T) {
	want := prometheusRule(t)
	if *update {
		if err := os.WriteFile(prometheusRulePath, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(prometheusRulePath)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s is not generated from prometheus/rules (%v): run go test ./deploy/observability -run TestPrometheusRuleUpToDate -update", prometheusRulePath, err)
	}
	// What promtool reads from it is the same rules.
	var pr struct {
		Spec ruleGroups `yaml:"spec"`
	}
	if err := yaml.Unmarshal(got, &pr); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range pr.Spec.Groups {
		n += len(g.Rules)
	}
	if m := len(readRules(t)); n != m {
		t.Errorf("%s has %d rules, prometheus/rules %d", prometheusRulePath, n, m)
	}
	// promtool checks the groups as a rule file.
	spec, _ := yaml.Marshal(pr.Spec)
	p := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(p, spec, 0o644)
	runPromtool(t, "check", "rules", p)
}
