package qmp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Requests QEMU cannot take as they are must fail promptly, never wait for
// a reply: names with control or non-BMP characters are sent as proper
// JSON (QEMU answers CommandNotFound, the connection goes on), and
// arguments nested deeper than QEMU's JSON parser accepts draw errors
// without an id, which no call can be matched with: the client closes the
// connection, failing the call at once with ErrClosed and the reason.
func TestQEMUUnparsableRequests(t *testing.T) {
	p := startQEMU(t)
	c := dialQEMU(t, p)
	deep := any(map[string]any{})
	for i := 0; i < 2000; i++ {
		deep = map[string]any{"x": deep}
	}
	cases := []struct {
		name string
		cmd  string
		args any
	}{
		{"control-char", "query-status\x01", nil},
		{"invalid-utf8", "query-\xffstatus", nil},
		{"non-bmp", "query-status\U000E0001", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.Execute(ctx, tc.cmd, tc.args, nil)
			var qe *qmp.Error
			if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
				t.Fatalf("err %v, want CommandNotFound", err)
			}
		})
	}
	st, err := qmp.QueryStatus(context.Background(), c)
	if err != nil || st.State != qmp.RunStatePrelaunch {
		t.Fatalf("after the bad names: %+v %v", st, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = c.Execute(ctx, "query-status", map[string]any{"deep": deep}, nil)
	if !errors.Is(err, qmp.ErrClosed) || !strings.Contains(err.Error(), "could not parse") || ctx.Err() != nil {
		t.Fatalf("too deep a request: %v, want ErrClosed saying QEMU could not parse it, at once", err)
	}
	// QEMU itself is fine: a new connection works. QEMU 5.2 may still be
	// parsing the closed connection's input when the next one attaches,
	// and fails that one's first request the same way: a later one works.
	c.Close()
	for try := 1; ; try++ {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		c2, err := qmp.Dial(dctx, "unix:"+p.sock)
		dcancel()
		if err == nil {
			defer c2.Close()
			if _, err := qmp.QueryStatus(context.Background(), c2); err != nil {
				t.Fatal(err)
			}
			return
		}
		if try == 5 || !strings.Contains(err.Error(), "could not parse") {
			t.Fatalf("new connection after the bad request (try %d): %v", try, err)
		}
		t.Logf("try %d: %v", try, err)
		time.Sleep(50 * time.Millisecond)
	}
}
