package qemutest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
)

// The benchmarks' shared pieces: the bare QMP client they compare the
// library with, and the median of per-iteration samples.

// RawQMP is the minimal hand-written QMP client a benchmark compares the
// library with (what a script that sends the commands itself does): one
// JSON line out, lines in until the reply, events skipped. It fails the
// benchmark on any error.
type RawQMP struct {
	conn net.Conn
	r    *bufio.Reader
}

// DialRaw connects to the QMP unix socket path, reads the greeting and
// negotiates capabilities. The connection closes with tb.
func DialRaw(tb testing.TB, path string) *RawQMP {
	tb.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	q := &RawQMP{conn: c, r: bufio.NewReaderSize(c, 1<<16)}
	q.line(tb) // greeting
	q.Call(tb, `{"execute":"qmp_capabilities"}`)
	return q
}

func (q *RawQMP) line(tb testing.TB) string {
	l, err := q.r.ReadString('\n')
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// Call sends cmd, a QMP request as JSON, and reads until its reply.
func (q *RawQMP) Call(tb testing.TB, cmd string) {
	if _, err := q.conn.Write([]byte(cmd + "\n")); err != nil {
		tb.Fatal(err)
	}
	for {
		l := q.line(tb)
		if strings.HasPrefix(l, `{"error"`) {
			tb.Fatalf("%s: %s", cmd, l)
		}
		if strings.HasPrefix(l, `{"return"`) {
			return
		}
	}
}

// Job runs a job the way a hand-written client would: command with args
// and "job-id" id, then its concluded event, query-jobs and job-dismiss.
func (q *RawQMP) Job(tb testing.TB, command, id string, args map[string]any) {
	args["job-id"] = id
	b, _ := json.Marshal(map[string]any{"execute": command, "arguments": args})
	q.Call(tb, string(b))
	want := fmt.Sprintf(`"status": "concluded", "id": %q`, id)
	for !strings.Contains(q.line(tb), want) {
	}
	q.Call(tb, `{"execute":"query-jobs"}`)
	q.Call(tb, fmt.Sprintf(`{"execute":"job-dismiss","arguments":{"id":%q}}`, id))
}

// Median returns the median of v (v is not changed).
func Median[T ~int64 | ~float64](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
