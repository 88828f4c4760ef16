// Command knownfail judges a `go test -json` stream against a list of known
// failures, for CI runs on QEMU versions where some tests are known to fail.
//
//	go test -json ./hmp | knownfail -known TestA -known 'TestB/sub'
//
// It prints each package's result line, the whole output of every
// unexpected failure, and a short account of every known one, and exits 1
// when a test failed that is not known to fail, a test did not finish, or a
// package failed for another reason than its tests (a build error, a
// crash). A known name covers that test and its subtests. A test whose
// failing subtests are all known is not an unexpected failure itself (Go
// marks a test failed when a subtest fails). Known failures that pass, or
// did not run, are reported so that the list can be pruned; they do not
// fail the run.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// event is one line of `go test -json` (see cmd/test2json).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	FailedBuild string
}

// test is what the stream said about one test.
type test struct {
	pkg, name string
	result    string // "pass", "fail", "skip", or "" when it did not finish
	output    strings.Builder
}

// pkgResult is what the stream said about one package.
type pkgResult struct {
	result      string // "pass", "fail", "skip" or ""
	failedBuild string
	output      strings.Builder
}

// verdict is the judgement of a stream.
type verdict struct {
	unexpected []*test   // failing tests not known to fail
	unfinished []*test   // tests that started and never ended
	known      []*test   // known failures that failed
	badPkgs    []string  // packages that failed for another reason than a test
	pkgOutput  []string  // package-level output, in order (result lines)
	nowPass    []string  // known names whose tests passed
	notRun     []string  // known names no test of the stream matched
	tests      []*test   // every test, in the order they started
	pkgs       []*pkgRef // every package, in the order they started
}

type pkgRef struct {
	name string
	*pkgResult
}

// covers reports whether the known name k covers test name t.
func covers(k, t string) bool { return t == k || strings.HasPrefix(t, k+"/") }

// judge reads a go test -json stream and judges it against known.
func judge(r io.Reader, known []string) (*verdict, error) {
	v := &verdict{}
	tests := map[[2]string]*test{}
	pkgs := map[string]*pkgResult{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event (e.g. a build error printed before the stream).
			v.pkgOutput = append(v.pkgOutput, string(line)+"\n")
			continue
		}
		if e.Package == "" {
			if e.Output != "" {
				v.pkgOutput = append(v.pkgOutput, e.Output)
			}
			continue
		}
		p := pkgs[e.Package]
		if p == nil {
			p = &pkgResult{}
			pkgs[e.Package] = p
			v.pkgs = append(v.pkgs, &pkgRef{e.Package, p})
		}
		if e.Test == "" {
			switch e.Action {
			case "output":
				p.output.WriteString(e.Output)
				v.pkgOutput = append(v.pkgOutput, e.Output)
			case "pass", "fail", "skip":
				p.result, p.failedBuild = e.Action, e.FailedBuild
			}
			continue
		}
		key := [2]string{e.Package, e.Test}
		t := tests[key]
		if t == nil {
			t = &test{pkg: e.Package, name: e.Test}
			tests[key] = t
			v.tests = append(v.tests, t)
		}
		switch e.Action {
		case "output":
			t.output.WriteString(e.Output)
		case "pass", "fail", "skip":
			t.result = e.Action
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}

	isKnown := func(t *test) bool {
		return slices.ContainsFunc(known, func(k string) bool { return covers(k, t.name) })
	}
	// A failed test with failed subtests is judged by them.
	hasFailedChild := func(t *test) bool {
		return slices.ContainsFunc(v.tests, func(c *test) bool {
			return c.pkg == t.pkg && c.result == "fail" && strings.HasPrefix(c.name, t.name+"/")
		})
	}
	failedTests := map[string]bool{}
	for _, t := range v.tests {
		switch {
		case t.result == "":
			v.unfinished = append(v.unfinished, t)
		case t.result != "fail":
		case isKnown(t):
			if !slices.ContainsFunc(known, func(k string) bool { return k != t.name && covers(k, t.name) }) {
				v.known = append(v.known, t) // report the known name's own test only
			}
			failedTests[t.pkg] = true
		case hasFailedChild(t):
			failedTests[t.pkg] = true
		default:
			v.unexpected = append(v.unexpected, t)
			failedTests[t.pkg] = true
		}
	}
	for _, p := range v.pkgs {
		switch {
		case p.failedBuild != "":
			v.badPkgs = append(v.badPkgs, fmt.Sprintf("%s: build of %s failed", p.name, p.failedBuild))
		case p.result == "":
			v.badPkgs = append(v.badPkgs, p.name+": no result (the test binary did not finish)")
		case p.result == "fail" && !failedTests[p.name]:
			v.badPkgs = append(v.badPkgs, p.name+": failed without a failing test (a crash, TestMain, or a build error)")
		}
	}
	if len(v.pkgs) == 0 {
		v.badPkgs = append(v.badPkgs, "no package in the stream (go test failed before testing?)")
	}
	for _, k := range known {
		ran, failed, unfinished := false, false, false
		for _, t := range v.tests {
			if covers(k, t.name) && t.result != "skip" {
				ran = true
				failed = failed || t.result == "fail"
				unfinished = unfinished || t.result == ""
			}
		}
		switch {
		case unfinished: // reported as such
		case !ran:
			v.notRun = append(v.notRun, k)
		case !failed:
			v.nowPass = append(v.nowPass, k)
		}
	}
	return v, nil
}

// ok reports whether the stream holds no unexpected failure.
func (v *verdict) ok() bool {
	return len(v.unexpected) == 0 && len(v.unfinished) == 0 && len(v.badPkgs) == 0
}

// report writes the judgement for a reader of a CI log.
func (v *verdict) report(w io.Writer) {
	for _, o := range v.pkgOutput {
		// The package-level lines are go test's own summary: ok, FAIL,
		// PASS, coverage, build errors.
		fmt.Fprint(w, o)
	}
	for _, t := range v.unexpected {
		fmt.Fprintf(w, "\nFAILED %s %s:\n%s", t.pkg, t.name, t.output.String())
	}
	for _, t := range v.unfinished {
		fmt.Fprintf(w, "\nDID NOT FINISH %s %s:\n%s", t.pkg, t.name, t.output.String())
	}
	for _, p := range v.badPkgs {
		fmt.Fprintf(w, "\nFAILED %s\n", p)
	}
	for _, t := range v.known {
		fmt.Fprintf(w, "known failure %s %s:\n", t.pkg, t.name)
		for _, l := range failureLines(t, v.tests) {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
	for _, k := range v.nowPass {
		fmt.Fprintf(w, "NOTE: known failure %s passed in this run: if it keeps passing, take it off the list\n", k)
	}
	for _, k := range v.notRun {
		fmt.Fprintf(w, "NOTE: known failure %s did not run: take it off the list or fix its name\n", k)
	}
}

// maxFailureLines bounds the account of one known failure.
const maxFailureLines = 12

// failureLines returns the messages t and its failed subtests logged from
// test files: the lines that say why they failed.
func failureLines(t *test, all []*test) []string {
	var lines []string
	for _, c := range all {
		if c.pkg != t.pkg || !covers(t.name, c.name) || c.result != "fail" {
			continue
		}
		for _, l := range strings.Split(c.output.String(), "\n") {
			l = strings.TrimSpace(l)
			if strings.HasPrefix(l, "---") || strings.HasPrefix(l, "===") || l == "" || strings.Contains(l, "qemutest: QEMU pid") {
				continue
			}
			if len(l) > 300 {
				l = l[:300] + "…"
			}
			lines = append(lines, c.name+": "+l)
			if len(lines) == maxFailureLines {
				return append(lines, "…")
			}
		}
	}
	return lines
}

// knownList is a repeatable -known flag.
type knownList []string

func (k *knownList) String() string     { return strings.Join(*k, ",") }
func (k *knownList) Set(s string) error { *k = append(*k, s); return nil }

func main() {
	var known knownList
	flag.Var(&known, "known", "a test (Test or Test/sub) known to fail; repeatable")
	flag.Parse()
	v, err := judge(os.Stdin, known)
	if err != nil {
		fmt.Fprintln(os.Stderr, "knownfail:", err)
		os.Exit(2)
	}
	v.report(os.Stdout)
	if !v.ok() {
		os.Exit(1)
	}
}
