/* SPDX-License-Identifier: GPL-2.0 */
/* socketrace stand-in: program.py passes the running kernel's version code. */
#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))
#ifndef SOCKETRACE_KERNEL_VERSION_CODE
#define SOCKETRACE_KERNEL_VERSION_CODE 0
#endif
#define LINUX_VERSION_CODE SOCKETRACE_KERNEL_VERSION_CODE
