package launch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSplitCommandLine(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  bool
	}{
		{in: "", want: nil},
		{in: "  \t\n", want: nil},
		{in: "qemu -m 64", want: []string{"qemu", "-m", "64"}},
		{in: "  a   b\tc\nd  ", want: []string{"a", "b", "c", "d"}},
		{in: `'a b' "c d"`, want: []string{"a b", "c d"}},
		{in: `a'b'"c"`, want: []string{"abc"}},
		{in: `'' ""`, want: []string{"", ""}},
		{in: `a\ b`, want: []string{"a b"}},
		{in: `'$HOME;rm -rf /' *`, want: []string{"$HOME;rm -rf /", "*"}},
		{in: `"a \"q\" \\ \$x \n"`, want: []string{`a "q" \ $x \n`}},
		{in: `'it'\''s'`, want: []string{"it's"}},
		{in: "a\\\nb", want: []string{"ab"}},
		{in: `-drive 'file=/x/a,,b.qcow2,if=none'`, want: []string{"-drive", "file=/x/a,,b.qcow2,if=none"}},
		{in: `'unterminated`, err: true},
		{in: `"unterminated`, err: true},
		{in: `"ends in \"`, err: true},
		{in: `trailing\`, err: true},
	}
	for _, tt := range tests {
		got, err := SplitCommandLine(tt.in)
		if tt.err {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("SplitCommandLine(%q) = %q, %v; want an error wrapping ErrSyntax", tt.in, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("SplitCommandLine(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("SplitCommandLine(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestReadArgvFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          []string
		err           bool
	}{
		{name: "words", content: "qemu-system-x86_64\n-name\nmy vm \"quoted\"\r\n\n# comment\n-S\n", want: []string{"qemu-system-x86_64", "-name", `my vm "quoted"`, "-S"}},
		{name: "no final newline", content: "a\nb", want: []string{"a", "b"}},
		{name: "empty", content: "\n# only a comment\n", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadArgvFile(p)
			if tt.err {
				if !errors.Is(err, ErrSyntax) {
					t.Fatalf("got %q, %v; want ErrSyntax", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if _, err := ReadArgvFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func TestReplacePath(t *testing.T) {
	tests := []struct {
		name    string
		argv    []string
		replace map[string]string
		want    []string
		count   map[string]int
	}{
		{
			name:    "option value",
			argv:    []string{"q", "-blockdev", "driver=file,filename=/x/a.qcow2,node-name=f0", "-hda", "/x/a.qcow2"},
			replace: map[string]string{"/x/a.qcow2": "/y/o.qcow2"},
			want:    []string{"q", "-blockdev", "driver=file,filename=/y/o.qcow2,node-name=f0", "-hda", "/y/o.qcow2"},
			count:   map[string]int{"/x/a.qcow2": 2},
		},
		{
			name:    "escaped commas both ways",
			argv:    []string{"-drive", "file=/x/a,,b.qcow2,if=none,id=d0"},
			replace: map[string]string{"/x/a,b.qcow2": "/y/c,d.qcow2"},
			want:    []string{"-drive", "file=/y/c,,d.qcow2,if=none,id=d0"},
			count:   map[string]int{"/x/a,b.qcow2": 1},
		},
		{
			name:    "prefix of a longer path is not replaced",
			argv:    []string{"-drive", "file=/x/a,,b.qcow2", "file=/x/a.qcow2.bak", "/x/a.qcow2x"},
			replace: map[string]string{"/x/a": "/z", "/x/a.qcow2": "/z"},
			want:    []string{"-drive", "file=/x/a,,b.qcow2", "file=/x/a.qcow2.bak", "/x/a.qcow2x"},
			count:   map[string]int{},
		},
		{
			name:    "simultaneous swap",
			argv:    []string{"filename=/a", "filename=/b"},
			replace: map[string]string{"/a": "/b", "/b": "/a"},
			want:    []string{"filename=/b", "filename=/a"},
			count:   map[string]int{"/a": 1, "/b": 1},
		},
		{
			name:    "unchanged words keep their bytes",
			argv:    []string{"unix:/s,,x,server=on", "a,,"},
			replace: map[string]string{"/a": "/b"},
			want:    []string{"unix:/s,,x,server=on", "a,,"},
			count:   map[string]int{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n := replacePath(tt.argv, tt.replace)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.count, n); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMentionsPath(t *testing.T) {
	tests := []struct {
		argv []string
		path string
		want bool
	}{
		{[]string{"-qmp", "unix:/run/q.sock,server=on,wait=off"}, "/run/q.sock", true},
		{[]string{"-qmp", "unix:/run/a,,b.sock,server=on"}, "/run/a,b.sock", true},
		{[]string{"-chardev", "socket,id=m,path=/run/q.sock,server=on", "-mon", "chardev=m,mode=control"}, "/run/q.sock", true},
		{[]string{"-qmp", "unix:/run/q.sock2,server=on"}, "/run/q.sock", false},
		{[]string{"-qmp", "unix:/run/other.sock,server=on"}, "/run/q.sock", false},
		{[]string{"/run/q.sock"}, "/run/q.sock", true},
	}
	for _, tt := range tests {
		if got := mentionsPath(tt.argv, tt.path); got != tt.want {
			t.Errorf("mentionsPath(%q, %q) = %v, want %v", tt.argv, tt.path, got, tt.want)
		}
	}
}
