package store_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/store"
)

func TestTree(t *testing.T) {
	//   base ─┬─ a ─── a1
	//         └─ b
	//   lone
	//   orphan (parent "gone" is missing) ─── orphan-child
	//   c1 <-> c2 (a cycle) ─── below-cycle
	rs := []*store.Record{
		{Name: "base"}, {Name: "a", Parent: "base"}, {Name: "b", Parent: "base"}, {Name: "a1", Parent: "a"},
		{Name: "lone"}, {Name: "orphan", Parent: "gone"}, {Name: "orphan-child", Parent: "orphan"},
		{Name: "c1", Parent: "c2"}, {Name: "c2", Parent: "c1"}, {Name: "below-cycle", Parent: "c1"},
		{Name: "a", Parent: "ignored duplicate"}, nil,
	}
	tree := store.BuildTree(rs)
	checks := []struct {
		what string
		got  []string
		want []string
	}{
		{"Roots", tree.Roots(), []string{"base", "lone"}},
		{"Children(base)", tree.Children("base"), []string{"a", "b"}},
		{"Children(a1)", tree.Children("a1"), nil},
		{"Children(missing)", tree.Children("missing"), nil},
		{"Leaves", tree.Leaves(), []string{"b", "a1", "lone", "orphan-child", "below-cycle"}},
		{"Descendants(base)", tree.Descendants("base"), []string{"a", "a1", "b"}},
		{"Descendants(c1)", tree.Descendants("c1"), []string{"c2", "below-cycle"}},
		{"Ancestors(a1)", tree.Ancestors("a1"), []string{"a", "base"}},
		{"Ancestors(orphan-child)", tree.Ancestors("orphan-child"), []string{"orphan"}},
		{"Ancestors(c1)", tree.Ancestors("c1"), []string{"c2"}},
		{"Dangling", tree.Dangling(), []string{"orphan"}},
		{"Cyclic", tree.Cyclic(), []string{"c1", "c2", "below-cycle"}},
	}
	for _, c := range checks {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.what, diff)
		}
	}
	parents := []struct {
		name, parent string
		present      bool
	}{{"a1", "a", true}, {"base", "", false}, {"orphan", "gone", false}, {"missing", "", false}}
	for _, p := range parents {
		if got, ok := tree.Parent(p.name); got != p.parent || ok != p.present {
			t.Errorf("Parent(%q) = %q, %v; want %q, %v", p.name, got, ok, p.parent, p.present)
		}
	}
	if r := tree.Record("a"); r == nil || r.Parent != "base" {
		t.Errorf("Record(a) = %+v, want the first record named a", r)
	}
}
