package store_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/store"
)

// The tests below re-run the test binary as a child process
// (TestHelperProcess) selected by these environment variables.
const (
	envHelper = "VMSNAP_STORE_HELPER"
	envRoot   = "VMSNAP_STORE_ROOT"
	envArg    = "VMSNAP_STORE_ARG"
)

// TestHelperProcess is not a test: it is the child process of the
// multi-process tests.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("helper process for the multi-process tests")
	}
	s, err := store.NewFileStore(os.Getenv(envRoot))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	arg := os.Getenv(envArg)
	switch mode {
	case "hold-lock":
		err = helperHoldLock(s)
	case "crash-writer":
		err = helperCrashWriter(s, arg, false)
	case "crash-committer":
		err = helperCrashWriter(s, arg, true)
	case "racer":
		err = helperRacer(s, arg)
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func startHelper(t *testing.T, mode, root, arg string) (*exec.Cmd, io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	// GORACE: a race-enabled child would otherwise sleep a second at exit.
	cmd.Env = append(os.Environ(), envHelper+"="+mode, envRoot+"="+root, envArg+"="+arg, "GORACE=atexit_sleep_ms=0")
	cmd.Stderr = &lockedBuffer{}
	stdin, err := cmd.StdinPipe()
	must(t, err)
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, stdin, bufio.NewScanner(stdout)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// helperHoldLock takes the lock, says "locked", and holds it until stdin
// closes.
func helperHoldLock(s *store.FileStore) error {
	unlock, err := s.Lock(context.Background(), dom)
	if err != nil {
		return err
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	return unlock()
}

func TestLockAcrossProcesses(t *testing.T) {
	s, root := newFileStore(t)
	cmd, stdin, out := startHelper(t, "hold-lock", root, "")
	if !out.Scan() || out.Text() != "locked" {
		t.Fatalf("child did not lock: %q %v", out.Text(), cmd.Stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if u, err := s.Lock(ctx, dom); !errors.Is(err, store.ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
		if u != nil {
			u()
		}
		t.Fatalf("Lock while another process holds it: %v, want ErrBusy", err)
	}
	if d := time.Since(start); d < 90*time.Millisecond || d > 2*time.Second {
		t.Errorf("Lock gave up after %v, want about the 100ms deadline", d)
	}
	// The child releases when its stdin closes; waiting with no deadline
	// must then succeed.
	got := make(chan error, 1)
	go func() {
		u, err := s.Lock(context.Background(), dom)
		if err == nil {
			u()
		}
		got <- err
	}()
	stdin.Close()
	select {
	case err := <-got:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("lock not granted after the other process released it")
	}
	must(t, cmd.Wait())

	// A process killed while holding the lock releases it.
	cmd, _, out = startHelper(t, "hold-lock", root, "")
	if !out.Scan() {
		t.Fatalf("child did not lock: %v", cmd.Stderr)
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	u, err := s.Lock(ctx2, dom)
	must(t, err)
	u()
}

// crashNames are the snapshots the crash writer rewrites in turn.
var crashNames = []string{"alpha", "beta", "gamma"}

// crashRecord is version v of a record: every field is derived from v, so a
// mix of two versions is detected by checkCrashRecord.
func crashRecord(v int) *store.Record {
	tag := "v" + strconv.Itoa(v)
	disks := make([]store.Disk, v%4+1)
	for i := range disks {
		disks[i] = store.Disk{Device: fmt.Sprintf("virtio%d", i), Tag: tag, VMStateSize: uint64(v), VMClock: time.Duration(v)}
	}
	return &store.Record{
		Name:         crashNames[v%len(crashNames)],
		Description:  tag,
		CreationTime: time.Unix(int64(v), int64(v)).UTC(),
		Status:       store.StatusOK,
		Disks:        disks,
		Labels:       map[string]string{"v": tag},
		// About 64 KiB, so that a torn write would be likely to show.
		Config: bytes.Repeat([]byte(fmt.Sprintf("config of %s\n", tag)), 65536/(12+len(tag))),
	}
}

func checkCrashRecord(r *store.Record) (int, error) {
	v, err := strconv.Atoi(strings.TrimPrefix(r.Description, "v"))
	if err != nil {
		return 0, fmt.Errorf("record %q: description %q", r.Name, r.Description)
	}
	want := crashRecord(v)
	want.FormatVersion = store.CurrentFormatVersion
	// The large config is compared on its own: cmp walks byte slices one
	// element at a time.
	if !bytes.Equal(want.Config, r.Config) {
		return v, fmt.Errorf("record %q: config is not version %d's (%d bytes, want %d)", r.Name, v, len(r.Config), len(want.Config))
	}
	got := *r
	want.Config, got.Config = nil, nil
	if diff := cmp.Diff(want, &got); diff != "" {
		return v, fmt.Errorf("record %q mixes versions (-version %d +read):\n%s", r.Name, v, diff)
	}
	return v, nil
}

// helperCrashWriter writes versions base, base+1, ... forever, printing each
// version once its Put (or its Commit making it current) has returned.
func helperCrashWriter(s *store.FileStore, arg string, commit bool) error {
	base, err := strconv.Atoi(arg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	for v := base; ; v++ {
		if commit {
			err = s.Commit(ctx, dom, crashRecord(v), true)
		} else {
			err = s.Put(ctx, dom, crashRecord(v))
		}
		if err != nil {
			return err
		}
		fmt.Println(v)
	}
}

// TestCrashDuringWrites kills a writing process with SIGKILL at random
// moments, many times. Afterwards every record parses and is exactly the
// last version whose write returned, or the version being written.
func TestCrashDuringWrites(t *testing.T) { crashDuringWrites(t, false) }

// TestCrashDuringCommits does the same with Commit, and checks too that
// the current snapshot is the last acknowledged one, or the one in flight
// if its record landed: never a snapshot whose record was not written.
func TestCrashDuringCommits(t *testing.T) { crashDuringWrites(t, true) }

func crashDuringWrites(t *testing.T, commit bool) {
	s, root := newFileStore(t)
	ctx := context.Background()
	runs := 100
	if raceEnabled {
		runs = 40
	}
	mode := "crash-writer"
	if commit {
		mode = "crash-committer"
		runs /= 2
	}
	committed := map[string]int{} // newest acknowledged version per name
	next := 0
	var inflightLanded, inflightLost, tempsLeft int
	var firstAck, waitKill time.Duration
	for run := 0; run < runs; run++ {
		cmd, _, out := startHelper(t, mode, root, strconv.Itoa(next))
		acks := make(chan int, 1024)
		go func() {
			defer close(acks)
			for out.Scan() {
				v, err := strconv.Atoi(out.Text())
				if err == nil {
					acks <- v
				}
			}
		}()
		last := -1
		startWait := time.Now()
		select {
		case v, ok := <-acks:
			if !ok {
				t.Fatalf("run %d: writer died: %v", run, cmd.Stderr)
			}
			last = v
		case <-time.After(20 * time.Second):
			t.Fatalf("run %d: writer wrote nothing", run)
		}
		firstAck += time.Since(startWait)
		time.Sleep(time.Duration(rand.IntN(15000)) * time.Microsecond)
		killAt := time.Now()
		must(t, cmd.Process.Signal(syscall.SIGKILL))
		cmd.Wait()
		waitKill += time.Since(killAt)
		for v := range acks {
			last = v
		}
		for v := next; v <= last; v++ {
			committed[crashNames[v%len(crashNames)]] = v
		}
		inflight := last + 1
		next = last + 2

		rs, err := s.List(ctx, dom)
		if err != nil {
			t.Fatalf("run %d: List after SIGKILL: %v", run, err)
		}
		if len(rs) > len(crashNames) {
			t.Fatalf("run %d: %d records, want at most %d", run, len(rs), len(crashNames))
		}
		landed := false
		for _, r := range rs {
			v, err := checkCrashRecord(r)
			if err != nil {
				t.Fatalf("run %d: %v", run, err)
			}
			landed = landed || v == inflight
			switch {
			case v == committed[r.Name]:
				if r.Name == crashNames[inflight%len(crashNames)] {
					inflightLost++
				}
			case v == inflight:
				inflightLanded++
				committed[r.Name] = v // it is on disk now
			default:
				t.Fatalf("run %d: record %q is version %d; the last acknowledged is %d and the one in flight %d",
					run, r.Name, v, committed[r.Name], inflight)
			}
		}
		if commit {
			cur, err := s.Current(ctx, dom)
			if err != nil {
				t.Fatalf("run %d: Current after SIGKILL: %v", run, err)
			}
			want := crashNames[last%len(crashNames)]
			if landed && cur == crashNames[inflight%len(crashNames)] {
				want = cur
			}
			if cur != want {
				t.Fatalf("run %d: current snapshot is %q; the last acknowledged is %q (version %d), in flight %q (landed: %v)",
					run, cur, crashNames[last%len(crashNames)], last, crashNames[inflight%len(crashNames)], landed)
			}
		}
		for name, v := range committed {
			found := false
			for _, r := range rs {
				found = found || r.Name == name
			}
			if !found {
				t.Fatalf("run %d: acknowledged record %q (version %d) is gone", run, name, v)
			}
		}
	}
	entries, _ := os.ReadDir(filepath.Join(root, dom))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			tempsLeft++
		}
	}
	t.Logf("waiting for first acks: %v, for killed children: %v", firstAck, waitKill)
	t.Logf("%d kills: in-flight write landed %d times, lost %d times; %d temp files left behind",
		runs, inflightLanded, inflightLost, tempsLeft)
	unlock, err := s.Lock(ctx, dom)
	must(t, err)
	unlock()
	entries, _ = os.ReadDir(filepath.Join(root, dom))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temp file %s survived Lock", e.Name())
		}
	}
}

// helperRacer runs rounds of locked operations on the shared domain: bump
// the shared counter, create a child of the current snapshot and make it
// current, and every third round remove its previous snapshot with
// RemoveAndReparent. It prints "+name" and "-name" as operations commit.
func helperRacer(s *store.FileStore, arg string) error {
	id, roundsText, _ := strings.Cut(arg, ":")
	rounds, err := strconv.Atoi(roundsText)
	if err != nil {
		return err
	}
	for i := 0; i < rounds; i++ {
		if err := raceRound(s, id, i); err != nil {
			return fmt.Errorf("racer %s round %d: %w", id, i, err)
		}
	}
	return nil
}

func raceRound(s *store.FileStore, id string, i int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unlock, err := s.Lock(ctx, dom)
	if err != nil {
		return err
	}
	defer unlock()
	c, err := s.Get(ctx, dom, "counter")
	if errors.Is(err, store.ErrNotFound) {
		c, err = &store.Record{Name: "counter", Labels: map[string]string{"n": "0"}}, nil
	}
	if err != nil {
		return err
	}
	n, _ := strconv.Atoi(c.Labels["n"])
	c.Labels["n"] = strconv.Itoa(n + 1)
	if err := s.Put(ctx, dom, c); err != nil {
		return err
	}
	cur, err := s.Current(ctx, dom)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("p%s-%d", id, i)
	r := &store.Record{Name: name, Parent: cur, CreationTime: time.Now(), Status: store.StatusOK}
	if err := store.Create(ctx, s, dom, r); err != nil {
		return err
	}
	if err := s.SetCurrent(ctx, dom, name); err != nil {
		return err
	}
	fmt.Println("+" + name)
	if i%3 == 2 {
		prev := fmt.Sprintf("p%s-%d", id, i-1)
		if err := store.RemoveAndReparent(ctx, s, dom, prev); err != nil {
			return err
		}
		fmt.Println("-" + prev)
	}
	return nil
}

// TestTwoProcessesRace runs two processes that create, re-parent and delete
// snapshots of one domain under its lock, while this process keeps listing
// without the lock. No update is lost, no reader sees a torn file, and the
// snapshots form one chain ending at the current one.
func TestTwoProcessesRace(t *testing.T) {
	s, root := newFileStore(t)
	ctx := context.Background()
	const rounds = 40
	type child struct {
		cmd   *exec.Cmd
		lines []string
		done  chan struct{}
	}
	var children []*child
	for _, id := range []string{"a", "b"} {
		cmd, _, out := startHelper(t, "racer", root, id+":"+strconv.Itoa(rounds))
		c := &child{cmd: cmd, done: make(chan struct{})}
		go func() {
			defer close(c.done)
			for out.Scan() {
				c.lines = append(c.lines, out.Text())
			}
		}()
		children = append(children, c)
	}
	// The reader stops before the test's temporary directory is removed,
	// even when the test fails early.
	stop := make(chan struct{})
	lists := 0
	var reader sync.WaitGroup
	reader.Add(1)
	go func() {
		defer reader.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.List(ctx, dom); err != nil {
				t.Errorf("unlocked List during the race: %v", err)
				return
			}
			if _, err := s.Current(ctx, dom); err != nil {
				t.Errorf("unlocked Current during the race: %v", err)
				return
			}
			lists++
		}
	}()
	var stopOnce sync.Once
	stopReader := func() {
		stopOnce.Do(func() { close(stop) })
		reader.Wait()
	}
	t.Cleanup(stopReader)
	want := map[string]bool{}
	for _, c := range children {
		<-c.done
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("racer failed: %v\n%v", err, c.cmd.Stderr)
		}
		for _, l := range c.lines {
			want[l[1:]] = l[0] == '+'
		}
	}
	stopReader()
	t.Logf("unlocked reader listed %d times during the race", lists)

	rs, err := s.List(ctx, dom)
	must(t, err)
	var got, wantNames []string
	var snaps []*store.Record
	for _, r := range rs {
		if r.Name == "counter" {
			if r.Labels["n"] != strconv.Itoa(2*rounds) {
				t.Errorf("counter = %s after %d locked increments: lost update", r.Labels["n"], 2*rounds)
			}
			continue
		}
		got = append(got, r.Name)
		snaps = append(snaps, r)
	}
	for n, alive := range want {
		if alive {
			wantNames = append(wantNames, n)
		}
	}
	sort.Strings(got)
	sort.Strings(wantNames)
	if diff := cmp.Diff(wantNames, got); diff != "" {
		t.Errorf("snapshots after the race (-committed +stored):\n%s", diff)
	}
	tree := store.BuildTree(snaps)
	if d, c := tree.Dangling(), tree.Cyclic(); len(d)+len(c) != 0 {
		t.Errorf("dangling %v, cyclic %v", d, c)
	}
	roots, leaves := tree.Roots(), tree.Leaves()
	if len(roots) != 1 || len(leaves) != 1 || len(tree.Descendants(roots[0])) != len(snaps)-1 {
		t.Errorf("snapshots do not form one chain: roots %v leaves %v", roots, leaves)
	}
	if cur, err := s.Current(ctx, dom); err != nil || len(leaves) != 1 || cur != leaves[0] {
		t.Errorf("current = %q, %v; want the chain's leaf %v", cur, err, leaves)
	}
}
