package store

import "slices"

// Tree is the parent/child structure of one domain's snapshots, built from
// records (usually List's result). It is a read-only snapshot of them.
// Orders follow the order of the records given (List sorts by creation
// time, then name).
type Tree struct {
	// order and records are the records kept (the first of each name),
	// in the order given; index maps a name to its position there.
	order   []string
	records []*Record
	index   map[string]int
	// children holds the positions of the children of the record at
	// position i, in order, at children[first[i]:first[i+1]].
	children []int
	first    []int
}

// BuildTree indexes records by name. If two records share a name the first
// one wins.
func BuildTree(records []*Record) *Tree {
	t := &Tree{
		order:   make([]string, 0, len(records)),
		records: make([]*Record, 0, len(records)),
		index:   make(map[string]int, len(records)),
	}
	for _, r := range records {
		if r == nil {
			continue
		}
		if _, dup := t.index[r.Name]; dup {
			continue
		}
		t.index[r.Name] = len(t.records)
		t.records = append(t.records, r)
		t.order = append(t.order, r.Name)
	}
	// Count each record's children, then place them in order.
	parent := make([]int, len(t.records))
	t.first = make([]int, len(t.records)+1)
	for i, r := range t.records {
		parent[i] = -1
		if r.Parent == "" {
			continue
		}
		if p, ok := t.index[r.Parent]; ok {
			parent[i] = p
			t.first[p+1]++
		}
	}
	for i := 1; i < len(t.first); i++ {
		t.first[i] += t.first[i-1]
	}
	t.children = make([]int, t.first[len(t.records)])
	next := slices.Clone(t.first[:len(t.records)])
	for i, p := range parent {
		if p >= 0 {
			t.children[next[p]] = i
			next[p]++
		}
	}
	return t
}

// kids returns the positions of the children of the record at position i.
func (t *Tree) kids(i int) []int { return t.children[t.first[i]:t.first[i+1]] }

// Record returns the named record, or nil.
func (t *Tree) Record(name string) *Record {
	if i, ok := t.index[name]; ok {
		return t.records[i]
	}
	return nil
}

// Parent returns the parent's name of the named snapshot and whether that
// parent is present in the tree. For a root it returns "", false.
func (t *Tree) Parent(name string) (string, bool) {
	r := t.Record(name)
	if r == nil || r.Parent == "" {
		return "", false
	}
	_, present := t.index[r.Parent]
	return r.Parent, present
}

// Children returns the names of the snapshots whose parent is name.
func (t *Tree) Children(name string) []string {
	i, ok := t.index[name]
	if !ok {
		return nil
	}
	return t.names(t.kids(i))
}

// names returns the names of the records at positions ps, nil for none.
func (t *Tree) names(ps []int) []string {
	if len(ps) == 0 {
		return nil
	}
	out := make([]string, len(ps))
	for j, p := range ps {
		out[j] = t.order[p]
	}
	return out
}

// Roots returns the snapshots without a parent.
func (t *Tree) Roots() []string {
	var out []string
	for i, name := range t.order {
		if t.records[i].Parent == "" {
			out = append(out, name)
		}
	}
	return out
}

// Leaves returns the snapshots without children.
func (t *Tree) Leaves() []string {
	var out []string
	for i, name := range t.order {
		if len(t.kids(i)) == 0 {
			out = append(out, name)
		}
	}
	return out
}

// Dangling returns the snapshots whose parent has no record. They are
// reported rather than treated as roots: the metadata is inconsistent.
func (t *Tree) Dangling() []string {
	var out []string
	for i, name := range t.order {
		if p := t.records[i].Parent; p != "" {
			if _, ok := t.index[p]; !ok {
				out = append(out, name)
			}
		}
	}
	return out
}

// Cyclic returns the snapshots that cannot be reached from a root or a
// dangling snapshot: they are on, or below, a cycle of parent links.
func (t *Tree) Cyclic() []string {
	reached := make([]bool, len(t.records))
	var stack []int
	for i, r := range t.records {
		if r.Parent != "" {
			if _, ok := t.index[r.Parent]; ok {
				continue // neither a root nor dangling
			}
		}
		reached[i] = true
		for stack = append(stack[:0], i); len(stack) > 0; {
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			for _, c := range t.kids(n) {
				if !reached[c] {
					reached[c] = true
					stack = append(stack, c)
				}
			}
		}
	}
	var out []string
	for i, name := range t.order {
		if !reached[i] {
			out = append(out, name)
		}
	}
	return out
}

// Descendants returns every snapshot below name, depth first, parents
// before their children. It terminates on cyclic data.
func (t *Tree) Descendants(name string) []string {
	start, ok := t.index[name]
	if !ok {
		return nil
	}
	var out []string
	seen := map[int]bool{start: true}
	var walk func(int)
	walk = func(n int) {
		for _, c := range t.kids(n) {
			if seen[c] {
				continue
			}
			seen[c] = true
			out = append(out, t.order[c])
			walk(c)
		}
	}
	walk(start)
	return out
}

// Ancestors returns the parent of name, its parent, and so on up to a root
// (or to a missing parent). It terminates on cyclic data.
func (t *Tree) Ancestors(name string) []string {
	var out []string
	seen := map[string]bool{name: true}
	for {
		p, ok := t.Parent(name)
		if !ok || seen[p] {
			return out
		}
		seen[p] = true
		out = append(out, p)
		name = p
	}
}
