/*
 * greeterd: answers every TCP connection with "<greeting>, <name>!" where <name> is the
 * first line the client sends. Settings come from /etc/greeterd.conf (port=, greeting=).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define VERSION "1.1.0"

static int port = 7070;
static char greeting[256] = "Hello";

static void load_config(const char *path) {
    FILE *f = fopen(path, "r");
    char line[256];
    if (!f) {
        fprintf(stderr, "greeterd: cannot read %s: %s (using defaults)\n", path, strerror(errno));
        return;
    }
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        if (strncmp(line, "port=", 5) == 0) port = atoi(line + 5);
        else if (strncmp(line, "greeting=", 9) == 0) snprintf(greeting, sizeof greeting, "%s", line + 9);
    }
    fclose(f);
}

int main(int argc, char **argv) {
    const char *config = argc > 1 ? argv[1] : "/etc/greeterd.conf";
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        puts("greeterd " VERSION);
        return 0;
    }
    load_config(config);
    signal(SIGPIPE, SIG_IGN);
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(server, (struct sockaddr *)&address, sizeof address) != 0 || listen(server, 16) != 0) {
        fprintf(stderr, "greeterd: cannot listen on port %d: %s\n", port, strerror(errno));
        return 1;
    }
    fprintf(stderr, "greeterd %s listening on port %d\n", VERSION, port);
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) continue;
        char name[128] = {0};
        ssize_t n = read(client, name, sizeof name - 1);
        if (n > 0) {
            name[strcspn(name, "\r\n")] = 0;
            char reply[400];
            int length = snprintf(reply, sizeof reply, "%s, %s!\n", greeting, name[0] ? name : "stranger");
            if (write(client, reply, length) < 0) perror("greeterd: write");
        }
        close(client);
    }
}
