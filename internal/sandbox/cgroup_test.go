package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const hybridSelf = `9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
`

// A container's view: v1 hierarchies mounted at a sub-root, cpu and cpuacct co-mounted.
const containerMountinfo = `100 99 0:40 /docker/c1 /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
101 99 0:41 /docker/c1 /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
102 99 0:42 /docker/c1 /sys/fs/cgroup/pids ro,nosuid - cgroup cgroup rw,pids
`

const containerSelf = `5:pids:/docker/c1
4:memory:/docker/c1/sub
3:cpu,cpuacct:/docker/c1
`

const unifiedMountinfo = `30 23 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

const unifiedSelf = "0::/user.slice/user-1000.slice/session-2.scope\n"

func TestDetectCgroups(t *testing.T) {
	s := detectCgroupsFrom([]byte(hybridMountinfo), []byte(hybridSelf), "")
	if s.version != cgroupV1 || s.parents["memory"] != "/sys/fs/cgroup/memory/process_api/abc" ||
		s.parents["pids"] != "/sys/fs/cgroup/pids" || s.parents["cpu"] != "/sys/fs/cgroup/cpu" {
		t.Errorf("hybrid: %+v", s)
	}
	s = detectCgroupsFrom([]byte(containerMountinfo), []byte(containerSelf), "")
	if s.version != cgroupV1 || s.parents["memory"] != "/sys/fs/cgroup/memory/sub" ||
		s.parents["cpu"] != "/sys/fs/cgroup/cpu,cpuacct" || s.parents["pids"] != "/sys/fs/cgroup/pids" {
		t.Errorf("container: %+v", s)
	}
	s = detectCgroupsFrom([]byte(unifiedMountinfo), []byte(unifiedSelf), "")
	if s.version != cgroupV2 || s.parent != "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope" {
		t.Errorf("unified: %+v", s)
	}
	s = detectCgroupsFrom([]byte(unifiedMountinfo), []byte(unifiedSelf), "/cordon.slice")
	if s.version != cgroupV2 || s.parent != "/sys/fs/cgroup/cordon.slice" || !s.override {
		t.Errorf("unified with override: %+v", s)
	}
	// Where the hugetlb controller is: the v2 hierarchy beside v1 ones
	// (hybrid), a v1 hierarchy of its own, the v2 cgroup itself.
	s = detectCgroupsFrom([]byte(hybridMountinfo), []byte(hybridSelf), "")
	if h := s.hugetlb; !h.found || h.parent != "/sys/fs/cgroup/unified" || !h.v2 {
		t.Errorf("hybrid hugetlb: %+v", h)
	}
	s = detectCgroupsFrom([]byte(hybridMountinfo+"42 31 0:39 / /sys/fs/cgroup/hugetlb rw,relatime - cgroup cgroup rw,hugetlb\n"),
		[]byte(hybridSelf+"10:hugetlb:/h\n"), "")
	if h := s.hugetlb; !h.found || h.parent != "/sys/fs/cgroup/hugetlb/h" || h.v2 {
		t.Errorf("v1 hugetlb: %+v", h)
	}
	s = detectCgroupsFrom([]byte(containerMountinfo), []byte(containerSelf), "")
	if h := s.hugetlb; h.found || h.detail == "" {
		t.Errorf("container without hugetlb: %+v", h)
	}
	s = detectCgroupsFrom([]byte(unifiedMountinfo), []byte(unifiedSelf), "")
	if h := s.hugetlb; !h.found || h.parent != "" || !h.v2 {
		t.Errorf("unified hugetlb: %+v", h)
	}
	s = detectCgroupsFrom([]byte(""), []byte(""), "")
	if s.version != cgroupNone || s.prepare() == nil {
		t.Errorf("none: %+v", s)
	}
}

// TestCgroupV2Files checks, on a stand-in directory (this machine's memory,
// pids and cpu controllers are on v1), which files a v2 sandbox cgroup gets.
func TestCgroupV2Files(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"cgroup.controllers", "cgroup.subtree_control"} {
		content := ""
		if f == "cgroup.controllers" {
			content = "cpuset cpu io memory hugetlb pids rdma misc"
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &cgroupSetup{version: cgroupV2, parent: dir}
	if err := s.prepare(); err != nil {
		t.Fatal(err)
	}
	// hugetlb too: the stand-in's kernel has it.
	if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control")); string(b) != "+memory +pids +cpu +hugetlb" {
		t.Errorf("subtree_control %q", b)
	}
	cg, err := s.create("canister/1", cgroupLimits{memory: 1 << 30, pids: 64, cpuPercent: 150})
	if err != nil {
		t.Fatal(err)
	}
	if len(cg.dirs) != 1 || !strings.HasPrefix(filepath.Base(cg.dirs[0]), "cordon.") || strings.Contains(filepath.Base(cg.dirs[0]), "/") {
		t.Fatalf("dirs %v", cg.dirs)
	}
	want := map[string]string{"memory.max": "1073741824", "pids.max": "64", "cpu.max": "150000 100000", "memory.oom.group": "1"}
	for f, w := range want {
		// A stand-in's files are created with mode 0: only root may read
		// them back as they are (a real cgroup's files exist already).
		_ = os.Chmod(filepath.Join(cg.dirs[0], f), 0o600)
		b, err := os.ReadFile(filepath.Join(cg.dirs[0], f))
		if err != nil || string(b) != w {
			t.Errorf("%s = %q (%v), want %q", f, b, err, w)
		}
	}
}

// readCgroupUint reads what a cgroup file holds, one integer and a newline,
// and refuses what is not one (more than a 64-bit value's digits, or no
// file) with the file's name.
func TestReadCgroupUint(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"usage": "123456789\n", "long": strings.Repeat("9", 40), "text": "max\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := readCgroupUint(filepath.Join(dir, "usage")); err != nil || n != 123456789 {
		t.Fatalf("usage: %d, %v", n, err)
	}
	for _, name := range []string{"long", "text", "missing"} {
		if n, err := readCgroupUint(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s: read %d, want an error", name, n)
		} else if name != "text" && !strings.Contains(err.Error(), filepath.Join(dir, name)) {
			t.Errorf("%s: the error does not name the file: %v", name, err)
		}
	}
}
