#ifndef CHANGELAB_CNORM_SHIM_H
#define CHANGELAB_CNORM_SHIM_H

// changelab's C declarations of the part of NORM's API (Debian's libnorm 1.5.9,
// RFC 5740) that the engine uses. Debian's <normApi.h> is not valid C: it declares
// NormGetRxBindAddress with C++ references (line 371) and NormStreamGetVacancy with a
// default argument (line 591), so Swift's C importer cannot read it. These declarations
// restate the C ABI of the functions we call, with the same names, argument types and
// order as <normApi.h>; libnorm exports them with C linkage (extern "C").

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef const void *NormInstanceHandle;
typedef const void *NormSessionHandle;
typedef const void *NormNodeHandle;
typedef const void *NormObjectHandle;
typedef uint16_t NormSessionId;
typedef uint32_t NormNodeId;
typedef off_t NormSize;
typedef int NormDescriptor;

typedef enum NormObjectType {
    NORM_OBJECT_NONE,
    NORM_OBJECT_DATA,
    NORM_OBJECT_FILE,
    NORM_OBJECT_STREAM
} NormObjectType;

typedef enum NormAckingStatus {
    NORM_ACK_INVALID,
    NORM_ACK_FAILURE,
    NORM_ACK_PENDING,
    NORM_ACK_SUCCESS
} NormAckingStatus;

typedef enum NormEventType {
    NORM_EVENT_INVALID = 0,
    NORM_TX_QUEUE_VACANCY,
    NORM_TX_QUEUE_EMPTY,
    NORM_TX_FLUSH_COMPLETED,
    NORM_TX_WATERMARK_COMPLETED,
    NORM_TX_CMD_SENT,
    NORM_TX_OBJECT_SENT,
    NORM_TX_OBJECT_PURGED,
    NORM_TX_RATE_CHANGED,
    NORM_LOCAL_SENDER_CLOSED,
    NORM_REMOTE_SENDER_NEW,
    NORM_REMOTE_SENDER_RESET,
    NORM_REMOTE_SENDER_ADDRESS,
    NORM_REMOTE_SENDER_ACTIVE,
    NORM_REMOTE_SENDER_INACTIVE,
    NORM_REMOTE_SENDER_PURGED,
    NORM_RX_CMD_NEW,
    NORM_RX_OBJECT_NEW,
    NORM_RX_OBJECT_INFO,
    NORM_RX_OBJECT_UPDATED,
    NORM_RX_OBJECT_COMPLETED,
    NORM_RX_OBJECT_ABORTED,
    NORM_RX_ACK_REQUEST,
    NORM_GRTT_UPDATED,
    NORM_CC_ACTIVE,
    NORM_CC_INACTIVE,
    NORM_ACKING_NODE_NEW,
    NORM_SEND_ERROR,
    NORM_USER_TIMEOUT
} NormEventType;

typedef struct {
    NormEventType type;
    NormSessionHandle session;
    NormNodeHandle sender;
    NormObjectHandle object;
} NormEvent;

// Instances and events.
NormInstanceHandle NormCreateInstance(bool priorityBoost);
void NormDestroyInstance(NormInstanceHandle instance);
bool NormSetCacheDirectory(NormInstanceHandle instance, const char *cachePath);
bool NormGetNextEvent(NormInstanceHandle instance, NormEvent *theEvent, bool waitForEvent);
NormDescriptor NormGetDescriptor(NormInstanceHandle instance);
void NormSetDebugLevel(unsigned int level);

// Sessions.
NormSessionHandle NormCreateSession(NormInstanceHandle instance, const char *sessionAddress, uint16_t sessionPort,
                                    NormNodeId localNodeId);
void NormDestroySession(NormSessionHandle session);
bool NormSetMulticastInterface(NormSessionHandle session, const char *interfaceName);
bool NormSetTTL(NormSessionHandle session, unsigned char ttl);
bool NormSetLoopback(NormSessionHandle session, bool loopback);
bool NormSetTxSocketBuffer(NormSessionHandle session, unsigned int bufferSize);
bool NormSetRxSocketBuffer(NormSessionHandle session, unsigned int bufferSize);
void NormSetRxPortReuse(NormSessionHandle session, bool enableReuse, const char *rxBindAddress,
                        const char *senderAddress, uint16_t senderPort);

// Sender.
NormSessionId NormGetRandomSessionId(void);
bool NormStartSender(NormSessionHandle session, NormSessionId instanceId, uint32_t bufferSpace, uint16_t segmentSize,
                     uint16_t numData, uint16_t numParity, uint8_t fecId);
void NormSetTxRate(NormSessionHandle session, double bitsPerSecond);
void NormSetCongestionControl(NormSessionHandle session, bool enable, bool adjustRate);
void NormSetTxRateBounds(NormSessionHandle session, double rateMin, double rateMax);
void NormSetAutoParity(NormSessionHandle session, unsigned char autoParity);
void NormSetGrttEstimate(NormSessionHandle session, double grttEstimate);
void NormSetGrttMax(NormSessionHandle session, double grttMax);
NormObjectHandle NormFileEnqueue(NormSessionHandle session, const char *fileName, const char *infoPtr,
                                 unsigned int infoLen);
bool NormSetWatermark(NormSessionHandle session, NormObjectHandle object, bool overrideFlush);
bool NormResetWatermark(NormSessionHandle session);
bool NormAddAckingNode(NormSessionHandle session, NormNodeId nodeId);
NormAckingStatus NormGetAckingStatus(NormSessionHandle session, NormNodeId nodeId);
bool NormSendCommand(NormSessionHandle session, const char *cmdBuffer, unsigned int cmdLength, bool robust);

// Receiver.
bool NormStartReceiver(NormSessionHandle session, uint32_t bufferSpace);
void NormSetDefaultUnicastNack(NormSessionHandle session, bool unicastNacks);

// Objects and nodes.
NormObjectType NormObjectGetType(NormObjectHandle object);
uint16_t NormObjectGetInfoLength(NormObjectHandle object);
uint16_t NormObjectGetInfo(NormObjectHandle object, char *buffer, uint16_t bufferLen);
NormSize NormObjectGetSize(NormObjectHandle object);
void NormObjectCancel(NormObjectHandle object);
NormNodeHandle NormObjectGetSender(NormObjectHandle object);
bool NormFileGetName(NormObjectHandle file, char *nameBuffer, unsigned int bufferLen);
NormNodeId NormNodeGetId(NormNodeHandle node);
bool NormNodeGetCommand(NormNodeHandle remoteSender, char *buffer, unsigned int *buflen);

#endif
