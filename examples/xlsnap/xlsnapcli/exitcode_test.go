package xlsnapcli

import (
	"strings"
	"testing"
)

// Command-line mistakes exit 2 wherever the option stands; a failure of
// the operation (here, a bad snapshot name) exits 1 with one line.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
		say  string
	}{
		{[]string{"--bogus", "snapshot-list", "/nonexistent.sock"}, 2, "bogus"},
		{[]string{"--timeout", "abc", "snapshot-list", "/nonexistent.sock"}, 2, "timeout"},
		{[]string{"snapshot-list", "--timeout", "abc", "/nonexistent.sock"}, 2, "timeout"},
		{[]string{"snapshot-list", "--timeout", "-1s", "/nonexistent.sock"}, 2, "--timeout must be positive"},
		{[]string{"snapshot-create", "--quiesce", "/nonexistent.sock"}, 2, "--agent"},
		{[]string{"snapshot-create", "-n", ".bad", "/nonexistent.sock"}, 1, `".bad"`},
		{[]string{"snapshot-create", "-n", "", "/nonexistent.sock"}, 2, "empty snapshot name"},
		{[]string{"snapshot-create", "--n=", "/nonexistent.sock"}, 2, "empty snapshot name"},
	} {
		code, _, stderr := runIn(t, tc.args...)
		if code != tc.want {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, code, tc.want, stderr)
		}
		first, _, _ := strings.Cut(stderr, "\n")
		if !strings.Contains(first, tc.say) {
			t.Errorf("%q: first line %q does not say %q", tc.args, first, tc.say)
		}
		if tc.want == 1 && strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: stderr is not one line: %q", tc.args, stderr)
		}
	}
}
