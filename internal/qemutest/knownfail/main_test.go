package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// stream builds a go test -json stream of package p from "Action Test"
// pairs ("fail" with no test is the package's result).
func stream(t *testing.T, p string, evs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, s := range evs {
		action, name, _ := strings.Cut(s, " ")
		e := map[string]string{"Action": action, "Package": p}
		if name != "" {
			e["Test"] = name
		}
		if action == "output" {
			e["Output"] = name + ": failure message\n"
		}
		if action == "build" {
			e = map[string]string{"Action": "fail", "Package": p, "FailedBuild": p}
		}
		j, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func names(ts []*test) []string {
	var s []string
	for _, t := range ts {
		s = append(s, t.name)
	}
	return s
}

func TestJudge(t *testing.T) {
	for _, tt := range []struct {
		name           string
		known          []string
		events         []string
		ok             bool
		unexpected     []string
		knownFailed    []string
		nowPass        []string
		notRun         []string
		badPkgs        int
		unfinishedWant []string
	}{
		{
			name:   "all pass",
			events: []string{"run TestA", "pass TestA", "pass"},
			ok:     true,
		},
		{
			name:       "an unknown failure",
			events:     []string{"run TestA", "output TestA", "fail TestA", "fail"},
			unexpected: []string{"TestA"},
		},
		{
			name:        "a known failure",
			known:       []string{"TestA"},
			events:      []string{"run TestA", "fail TestA", "run TestB", "pass TestB", "fail"},
			ok:          true,
			knownFailed: []string{"TestA"},
		},
		{
			name:  "a known subtest fails its parent",
			known: []string{"TestS/jobs"},
			events: []string{"run TestS", "run TestS/jobs", "run TestS/jobs/x", "fail TestS/jobs/x", "fail TestS/jobs",
				"run TestS/hmp", "pass TestS/hmp", "fail TestS", "fail"},
			ok:          true,
			knownFailed: []string{"TestS/jobs"},
		},
		{
			name:  "an unknown sibling of a known subtest",
			known: []string{"TestS/jobs"},
			events: []string{"run TestS", "run TestS/jobs", "fail TestS/jobs",
				"run TestS/hmp", "fail TestS/hmp", "fail TestS", "fail"},
			unexpected:  []string{"TestS/hmp"},
			knownFailed: []string{"TestS/jobs"},
		},
		{
			name:    "a known failure passes",
			known:   []string{"TestA", "TestGone"},
			events:  []string{"run TestA", "pass TestA", "pass"},
			ok:      true,
			nowPass: []string{"TestA"},
			notRun:  []string{"TestGone"},
		},
		{
			name:           "a test that never ends",
			known:          []string{"TestA"},
			events:         []string{"run TestA", "fail"},
			unfinishedWant: []string{"TestA"},
			badPkgs:        1,
		},
		{
			name:    "an empty stream",
			badPkgs: 1,
		},
		{
			name:    "a build failure",
			events:  []string{"build"},
			badPkgs: 1,
		},
		{
			name:    "a package failure without a failing test",
			events:  []string{"run TestA", "pass TestA", "fail"},
			badPkgs: 1,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v, err := judge(strings.NewReader(stream(t, "example.com/p", tt.events...)), tt.known)
			if err != nil {
				t.Fatal(err)
			}
			if v.ok() != tt.ok {
				t.Errorf("ok = %v, want %v", v.ok(), tt.ok)
			}
			for _, c := range []struct {
				what      string
				want, got []string
			}{
				{"unexpected", tt.unexpected, names(v.unexpected)},
				{"known", tt.knownFailed, names(v.known)},
				{"unfinished", tt.unfinishedWant, names(v.unfinished)},
				{"now passing", tt.nowPass, v.nowPass},
				{"not run", tt.notRun, v.notRun},
			} {
				if diff := cmp.Diff(c.want, c.got); diff != "" {
					t.Errorf("%s (-want +got):\n%s", c.what, diff)
				}
			}
			if len(v.badPkgs) != tt.badPkgs {
				t.Errorf("bad packages %q, want %d", v.badPkgs, tt.badPkgs)
			}
		})
	}
}

// TestReport checks that a known failure is told with its message.
func TestReport(t *testing.T) {
	in := stream(t, "example.com/p", "run TestA", "output TestA", "fail TestA", "fail")
	v, err := judge(strings.NewReader(in), []string{"TestA"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	v.report(&b)
	if want := "known failure example.com/p TestA:\n    TestA: TestA: failure message\n"; !strings.Contains(b.String(), want) {
		t.Errorf("report %q lacks %q", b.String(), want)
	}
}
