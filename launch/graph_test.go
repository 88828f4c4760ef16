package launch

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Command lines as toolstacks write them (QEMU 7.2 era).
var (
	libvirtJSON = []string{
		"/usr/bin/qemu-system-x86_64", "-name", "guest=vm1,debug-threads=on", "-S",
		"-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
		"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/vda.qcow2","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}`,
		"-blockdev", `{"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage","backing":null}`,
		"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x4","drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1}`,
		"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/data é, 1.raw","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`,
		"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}`,
		"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x5","drive":"libvirt-1-format","id":"virtio-disk1"}`,
		"-qmp", "unix:/run/vm1.sock,server=on,wait=off",
	}
	libvirtKeyval = []string{
		"qemu-system-x86_64", "-S", "-machine", "pc-i440fx-7.2",
		"-blockdev", "driver=file,filename=/img/vda.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
		"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage,backing=",
		"-device", "virtio-blk-pci,bus=pci.0,addr=0x4,drive=libvirt-2-format,id=virtio-disk0,bootindex=1",
		"-qmp", "unix:/run/vm1.sock,server=on,wait=off",
	}
	proxmox = []string{
		"/usr/bin/kvm", "-id", "100", "-name", "vm100",
		"-drive", "if=none,id=drive-ide2,media=cdrom,aio=io_uring",
		"-device", "ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2,bootindex=101",
		"-drive", "file=/var/lib/vz/images/100/vm-100-disk-0.qcow2,if=none,id=drive-virtio0,format=qcow2,cache=none,aio=threads,detect-zeroes=on",
		"-device", "virtio-blk-pci,drive=drive-virtio0,id=virtio0,bus=pci.0,addr=0xa,bootindex=100",
		"-drive", "file=/var/lib/vz/images/100/data,,raw.raw,if=none,id=drive-virtio1,format=raw,cache=none,aio=threads",
		"-device", "virtio-blk-pci,drive=drive-virtio1,id=virtio1,bus=pci.0,addr=0xb",
		"-qmp", "unix:/var/run/qemu-server/100.qmp,server=on,wait=off",
	}
	legacy = []string{
		"qemu-system-x86_64", "-hda", "/img/boot disk.qcow2",
		"-drive", "file=/img/data.raw,if=ide,format=raw",
		"-drive", "file=/img/v.raw,if=virtio,format=raw,size=1048576",
		"-cdrom", "/img/cd.iso",
		"-qmp", "unix:/run/q.sock,server=on,wait=off",
	}
	ovmf = []string{
		"qemu-system-x86_64", "-machine", "q35",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
		"-drive", "if=pflash,format=raw,unit=1,file=/vm/OVMF_VARS.fd",
		"-qmp", "unix:/run/q.sock,server=on,wait=off",
	}
	ovmfBlockdev = []string{
		"qemu-system-x86_64", "-machine", "pc-q35-7.2,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
		"-blockdev", `{"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"}`,
		"-blockdev", `{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}`,
		"-blockdev", `{"driver":"file","filename":"/vm/VARS.fd","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
		"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"}`,
		"-qmp", "unix:/run/q.sock,server=on,wait=off",
	}
)

func TestBlockGraphDisks(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		want map[string]string // first name -> file
		also map[string]string // another name -> first name
	}{
		{"libvirt JSON", libvirtJSON,
			map[string]string{"virtio-disk0": "/var/lib/libvirt/images/vda.qcow2", "virtio-disk1": "/var/lib/libvirt/images/data é, 1.raw"},
			map[string]string{"libvirt-2-format": "virtio-disk0", "libvirt-1-format": "virtio-disk1"}},
		{"libvirt keyval", libvirtKeyval, map[string]string{"virtio-disk0": "/img/vda.qcow2"}, map[string]string{"libvirt-2-format": "virtio-disk0"}},
		{"proxmox", proxmox,
			map[string]string{"drive-ide2": "", "drive-virtio0": "/var/lib/vz/images/100/vm-100-disk-0.qcow2", "drive-virtio1": "/var/lib/vz/images/100/data,raw.raw"},
			map[string]string{"virtio0": "drive-virtio0", "ide2": "drive-ide2"}},
		{"legacy", legacy,
			map[string]string{"ide0-hd0": "/img/boot disk.qcow2", "ide0-hd1": "/img/data.raw", "virtio0": "/img/v.raw", "ide1-cd0": "/img/cd.iso"}, nil},
		{"ovmf", ovmf, map[string]string{"pflash0": "/usr/share/OVMF/OVMF_CODE.fd", "pflash1": "/vm/OVMF_VARS.fd"},
			map[string]string{"system.flash1": "pflash1", "/machine/system.flash0": "pflash0"}},
		{"pflash short forms and an id", []string{"q", "-pflash", "/fw/code.fd", "-drive", "if=pflash,id=vars,file=/vm/vars.fd"},
			map[string]string{"pflash0": "/fw/code.fd", "vars": "/vm/vars.fd"},
			map[string]string{"system.flash0": "pflash0", "pflash1": "vars", "system.flash1": "vars"}},
		{"ovmf blockdev", ovmfBlockdev,
			map[string]string{"libvirt-pflash0-format": "/usr/share/OVMF/OVMF_CODE.fd", "libvirt-pflash1-format": "/vm/VARS.fd"},
			map[string]string{"pflash1": "libvirt-pflash1-format", "system.flash1": "libvirt-pflash1-format",
				"/machine/system.flash1": "libvirt-pflash1-format", "system.flash0": "libvirt-pflash0-format"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := parseBlockGraph(tt.argv)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, d := range g.disks() {
				got[d.label()] = g.file(d)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("disks (-want +got):\n%s", diff)
			}
			for other, first := range tt.also {
				d, err := g.find([]string{other}, "")
				if err != nil || d == nil || d.label() != first {
					t.Errorf("find(%s) = %v, %v; want %s", other, d, err, first)
				}
			}
		})
	}
}

func TestRewriteDisk(t *testing.T) {
	ovl := image{File: "/new/o,1 é.qcow2", Format: "qcow2"}
	over := func(base, f string) image { i := ovl; i.Backing, i.BackingFormat = base, f; return i }
	tests := []struct {
		name string
		argv []string
		disk string
		img  image
		want []string // the words of the result that changed, in order
		err  string
	}{
		{
			name: "libvirt JSON qcow2 with backing null", argv: libvirtJSON, disk: "virtio-disk0",
			img: over("/var/lib/libvirt/images/vda.qcow2", "qcow2"),
			want: []string{
				"-blockdev", `{"driver":"file","filename":"/new/o,1 é.qcow2","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/vda.qcow2","node-name":"libvirt-2-storage-base","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"node-name":"libvirt-2-format-base","read-only":false,"driver":"qcow2","file":"libvirt-2-storage-base","backing":null}`,
				"-blockdev", `{"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage","backing":"libvirt-2-format-base"}`,
			},
		},
		{
			name: "libvirt JSON raw disk", argv: libvirtJSON, disk: "libvirt-1-format",
			img: over("/var/lib/libvirt/images/data é, 1.raw", "raw"),
			want: []string{
				"-blockdev", `{"driver":"file","filename":"/new/o,1 é.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/data é, 1.raw","node-name":"libvirt-1-storage-base","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"node-name":"libvirt-1-format-base","read-only":false,"driver":"raw","file":"libvirt-1-storage-base"}`,
				"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":"libvirt-1-format-base"}`,
			},
		},
		{
			name: "keyval null backing", argv: libvirtKeyval, disk: "virtio-disk0", img: over("/img/vda.qcow2", "qcow2"),
			want: []string{
				"-blockdev", "driver=file,filename=/new/o,,1 é.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
				"-blockdev", "driver=file,filename=/img/vda.qcow2,node-name=libvirt-2-storage-base,auto-read-only=on,discard=unmap",
				"-blockdev", "node-name=libvirt-2-format-base,read-only=off,driver=qcow2,file=libvirt-2-storage-base,backing=",
				"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage,backing=libvirt-2-format-base",
			},
		},
		{
			name: "overlay over an unrelated image: chain from the header", argv: libvirtKeyval, disk: "virtio-disk0", img: over("/elsewhere/frozen.qcow2", "qcow2"),
			want: []string{
				"-blockdev", "driver=file,filename=/new/o,,1 é.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
				"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage",
			},
		},
		{
			name: "proxmox raw drive", argv: proxmox, disk: "drive-virtio1", img: over("/var/lib/vz/images/100/data,raw.raw", "raw"),
			want: []string{"-drive", "file=/new/o,,1 é.qcow2,if=none,id=drive-virtio1,format=qcow2,cache=none,aio=threads"},
		},
		{
			name: "proxmox by device id", argv: proxmox, disk: "virtio0", img: over("/var/lib/vz/images/100/vm-100-disk-0.qcow2", "qcow2"),
			want: []string{"-drive", "file=/new/o,,1 é.qcow2,if=none,id=drive-virtio0,format=qcow2,cache=none,aio=threads,detect-zeroes=on"},
		},
		{
			name: "hda becomes a drive", argv: legacy, disk: "ide0-hd0", img: over("/img/boot disk.qcow2", "qcow2"),
			want: []string{"-drive", "file=/new/o,,1 é.qcow2,index=0,if=ide,media=disk,format=qcow2"},
		},
		{
			name: "raw virtio drive loses raw's size", argv: legacy, disk: "virtio0", img: over("/img/v.raw", "raw"),
			want: []string{"-drive", "file=/new/o,,1 é.qcow2,if=virtio,format=qcow2"},
		},
		{
			name: "pflash vars", argv: ovmf, disk: "pflash1", img: over("/vm/OVMF_VARS.fd", "raw"),
			want: []string{"-drive", "if=pflash,format=qcow2,unit=1,file=/new/o,,1 é.qcow2"},
		},
		{
			name: "blockdev pflash vars", argv: ovmfBlockdev, disk: "pflash1", img: over("/vm/VARS.fd", "raw"),
			want: []string{
				"-blockdev", `{"driver":"file","filename":"/new/o,1 é.qcow2","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"driver":"file","filename":"/vm/VARS.fd","node-name":"libvirt-pflash1-storage-base","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"node-name":"libvirt-pflash1-format-base","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage-base"}`,
				"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"qcow2","file":"libvirt-pflash1-storage","backing":"libvirt-pflash1-format-base"}`,
			},
		},
		{
			name: "keyval null backing on an image whose header names none is left out", argv: libvirtKeyval, disk: "virtio-disk0",
			img: func() image { i := over("/img/vda.qcow2", "qcow2"); i.Below = []string{"/img/vda.qcow2"}; return i }(),
			want: []string{
				"-blockdev", "driver=file,filename=/new/o,,1 é.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
				"-blockdev", "driver=file,filename=/img/vda.qcow2,node-name=libvirt-2-storage-base,auto-read-only=on,discard=unmap",
				"-blockdev", "node-name=libvirt-2-format-base,read-only=off,driver=qcow2,file=libvirt-2-storage-base",
				"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage,backing=libvirt-2-format-base",
			},
		},
		{
			name: "keyval null backing that hides a header backing is kept", argv: libvirtKeyval, disk: "virtio-disk0",
			img: func() image {
				i := over("/img/vda.qcow2", "qcow2")
				i.Below = []string{"/img/vda.qcow2", "/img/template.qcow2"}
				return i
			}(),
			want: []string{
				"-blockdev", "driver=file,filename=/new/o,,1 é.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
				"-blockdev", "driver=file,filename=/img/vda.qcow2,node-name=libvirt-2-storage-base,auto-read-only=on,discard=unmap",
				"-blockdev", "node-name=libvirt-2-format-base,read-only=off,driver=qcow2,file=libvirt-2-storage-base,backing=",
				"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage,backing=libvirt-2-format-base",
			},
		},
		{
			name: "inline keyval backing loses its null", disk: "d",
			argv: []string{"q", "-blockdev", "node-name=f,driver=qcow2,file.driver=file,file.filename=/i/top.qcow2," +
				"backing.driver=qcow2,backing.file.driver=file,backing.file.filename=/i/base.qcow2,backing.backing=", "-device", "virtio-blk-pci,drive=f,id=d"},
			img: func() image { i := over("/i/base.qcow2", "qcow2"); i.Below = []string{"/i/base.qcow2"}; return i }(),
			want: []string{"-blockdev", "node-name=f,driver=qcow2,file.driver=file,file.filename=/new/o,,1 é.qcow2," +
				"backing.driver=qcow2,backing.file.driver=file,backing.file.filename=/i/base.qcow2"},
		},
		{
			name: "blockdev pflash vars by its qdev name", argv: ovmfBlockdev, disk: "system.flash1", img: over("/vm/VARS.fd", "raw"),
			want: []string{
				"-blockdev", `{"driver":"file","filename":"/new/o,1 é.qcow2","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"driver":"file","filename":"/vm/VARS.fd","node-name":"libvirt-pflash1-storage-base","auto-read-only":true,"discard":"unmap"}`,
				"-blockdev", `{"node-name":"libvirt-pflash1-format-base","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage-base"}`,
				"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"qcow2","file":"libvirt-pflash1-storage","backing":"libvirt-pflash1-format-base"}`,
			},
		},
		{
			name: "keyval blockdev qcow2 pflash vars", disk: "system.flash1",
			argv: []string{"q", "-machine", "q35,pflash0=code,pflash1=vars",
				"-blockdev", "driver=file,filename=/usr/share/OVMF/OVMF_CODE.fd,node-name=code-file,read-only=on",
				"-blockdev", "node-name=code,driver=raw,file=code-file,read-only=on",
				"-blockdev", "driver=file,filename=/vm/VARS.qcow2,node-name=vars-file",
				"-blockdev", "node-name=vars,driver=qcow2,file=vars-file,backing="},
			img: func() image { i := over("/vm/VARS.qcow2", "qcow2"); i.Below = []string{"/vm/VARS.qcow2"}; return i }(),
			want: []string{
				"-blockdev", "driver=file,filename=/new/o,,1 é.qcow2,node-name=vars-file",
				"-blockdev", "driver=file,filename=/vm/VARS.qcow2,node-name=vars-file-base",
				"-blockdev", "node-name=vars-base,driver=qcow2,file=vars-file-base",
				"-blockdev", "node-name=vars,driver=qcow2,file=vars-file,backing=vars-base",
			},
		},
		{name: "snapshot=on refused", argv: []string{"q", "-drive", "file=/a.qcow2,snapshot=on,if=virtio"}, disk: "virtio0", img: ovl, err: "snapshot=on"},
		{name: "json: refused", argv: []string{"q", "-drive", `file=json:{"driver":"nbd"},if=virtio`}, disk: "virtio0", img: ovl, err: "json:"},
		{name: "network protocol refused", argv: []string{"q", "-blockdev", "driver=nbd,server.type=inet,server.host=h,server.port=1,node-name=n", "-blockdev", "driver=raw,file=n,node-name=f", "-device", "virtio-blk-pci,drive=f,id=d"}, disk: "d", img: ovl, err: "nbd protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := parseBlockGraph(tt.argv)
			if err != nil {
				t.Fatal(err)
			}
			d, err := g.find([]string{tt.disk}, "")
			if err != nil || d == nil {
				t.Fatalf("find %s: %v, %v", tt.disk, d, err)
			}
			changed, err := g.rewriteDisk(d, tt.img)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("rewriteDisk = %v; want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil || !changed {
				t.Fatalf("rewriteDisk = %v, %v", changed, err)
			}
			got := changedWords(tt.argv, g.build())
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("changed words (-want +got):\n%s", diff)
			}
			// The result parses again and the disk now opens the overlay.
			g2, err := parseBlockGraph(g.build())
			if err != nil {
				t.Fatal(err)
			}
			d2, _ := g2.find([]string{tt.disk}, "")
			if d2 == nil || g2.file(d2) != tt.img.File {
				t.Errorf("after the rewrite %s opens %q", tt.disk, g2.file(d2))
			}
		})
	}
}

// changedWords returns the option/value pairs of got that are not in orig.
func changedWords(orig, got []string) []string {
	have := map[string]bool{}
	for _, w := range orig {
		have[w] = true
	}
	var out []string
	for i := 1; i < len(got); i++ {
		if !have[got[i]] {
			out = append(out, got[i-1], got[i])
		}
	}
	return out
}

func TestOptionsRoundTrip(t *testing.T) {
	for _, s := range []string{
		`{"driver":"file","filename":"/a,b \"q\".qcow2","node-name":"n","x":[1,2],"file":{"driver":"file","filename":"/x"},"backing":null}`,
		"driver=qcow2,file.driver=file,file.filename=/a,,b,node-name=n,backing=",
		"if=pflash,format=raw,readonly,file=/x",
	} {
		o, err := parseOptions(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := o.String(); got != s {
			t.Errorf("round trip:\n got %s\nwant %s", got, s)
		}
	}
}

// A second revert onto the same frozen image reuses the declared base
// node; an overlay over an image the command line does not declare drops
// the declared chain and lets QEMU follow the overlay's header.
func TestRewriteDiskTwice(t *testing.T) {
	argv := libvirtKeyval
	for _, step := range []struct {
		img  image
		want []string
	}{
		{image{File: "/new/o1.qcow2", Format: "qcow2", Backing: "/img/vda.qcow2", BackingFormat: "qcow2"}, nil},
		{image{File: "/new/o2.qcow2", Format: "qcow2", Backing: "/img/vda.qcow2", BackingFormat: "qcow2"}, []string{
			"-blockdev", "driver=file,filename=/new/o2.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
			"-blockdev", "driver=file,filename=/img/vda.qcow2,node-name=libvirt-2-storage-base,auto-read-only=on,discard=unmap",
			"-blockdev", "node-name=libvirt-2-format-base,read-only=off,driver=qcow2,file=libvirt-2-storage-base,backing=",
			"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage,backing=libvirt-2-format-base",
		}},
		{image{File: "/new/o3.qcow2", Format: "qcow2", Backing: "/other/frozen.qcow2", BackingFormat: "qcow2"}, []string{
			"-blockdev", "driver=file,filename=/new/o3.qcow2,node-name=libvirt-2-storage,auto-read-only=on,discard=unmap",
			"-blockdev", "node-name=libvirt-2-format,read-only=off,driver=qcow2,file=libvirt-2-storage",
		}},
	} {
		g, err := parseBlockGraph(argv)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := g.find([]string{"virtio-disk0"}, "")
		if _, err := g.rewriteDisk(d, step.img); err != nil {
			t.Fatal(err)
		}
		argv = g.build()
		if step.want == nil {
			continue
		}
		var got []string
		for i, w := range argv {
			if w == "-blockdev" {
				got = append(got, w, argv[i+1])
			}
		}
		if diff := cmp.Diff(step.want, got); diff != "" {
			t.Errorf("onto %s (-want +got):\n%s", step.img.File, diff)
		}
	}
}
