/* A UDP listener for dom0, whose busybox has none: binds PORT on every
 * address, prints each datagram as one line `udp <hex>` on stdout, and
 * exits after SECONDS. Built static on the host by rig/test_syslog.py.
 * Usage: udp_sink PORT SECONDS */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: udp_sink PORT SECONDS\n");
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("udp_sink");
        return 1;
    }
    alarm((unsigned)atoi(argv[2]));
    unsigned char buf[4096];
    for (;;) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n < 0)
            return 1;
        printf("udp ");
        for (ssize_t i = 0; i < n; i++)
            printf("%02x", buf[i]);
        printf("\n");
        fflush(stdout);
    }
}
